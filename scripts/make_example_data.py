"""Write src/dpo_fast/data/example_pairs.jsonl: the synthetic sample `dpo-fast score --example`
scores.

The data is synthetic: no model produced these log-probabilities. They are drawn to look like
what an inference engine writes next to preference pairs (sequence log-probs summed over the
response tokens, about -0.6 to -1.8 nats per token, the policy slightly preferring the chosen
responses after a little DPO training), so that a new user sees realistic output.

Deterministic: Python's Mersenne Twister (whose random() sequence is fixed across Python
versions) seeded with SEED, floats rounded to 4 decimals, records written in one order, so
running this script again gives the same bytes (tests/test_score.py checks it when the source
tree is there)::

    python scripts/make_example_data.py          # rewrite the packaged file
    python scripts/make_example_data.py --check  # exit 1 if the packaged file differs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

SEED = 20240615
PAIRS = 300
CATEGORIES = ("math", "code", "writing", "qa", "safety")
TASKS = {
    "math": "solve a word problem about {}",
    "code": "fix a bug in a function that parses {}",
    "writing": "write a short note about {}",
    "qa": "answer a question about {}",
    "safety": "decline politely to explain {}",
}
TOPICS = ("train schedules", "prime numbers", "tide tables", "CSV files", "bird migration",
          "compound interest", "sourdough", "unit conversions", "chess openings",
          "password storage", "solar panels", "library late fees")
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src",
                            "dpo_fast", "data", "example_pairs.jsonl")


def records(seed: int = SEED, pairs: int = PAIRS) -> list[dict]:
    """The synthetic pairs, as JSON-ready dicts."""
    rng = random.Random(seed)
    out = []
    for index in range(pairs):
        category = CATEGORIES[index % len(CATEGORIES)]
        topic = TOPICS[rng.randrange(len(TOPICS))]
        chosen_length = rng.randint(12, 320)
        rejected_length = max(4, int(chosen_length * rng.uniform(0.5, 1.6)))
        nats_per_token = rng.uniform(0.6, 1.8)
        ref_chosen = -chosen_length * nats_per_token * rng.uniform(0.9, 1.1)
        ref_rejected = -rejected_length * nats_per_token * rng.uniform(0.9, 1.1)
        # After some DPO steps: chosen log-probs up, rejected down, with noise so that a share
        # of pairs still has a negative margin.
        chosen = ref_chosen + rng.gauss(1.5, 4.0)
        rejected = ref_rejected + rng.gauss(-1.5, 4.0)
        out.append({
            "prompt_id": f"ex-{index:04d}",
            "category": category,
            "prompt": "Synthetic prompt: " + TASKS[category].format(topic) + ".",
            "chosen_logps": round(chosen, 4),
            "rejected_logps": round(rejected, 4),
            "ref_chosen_logps": round(ref_chosen, 4),
            "ref_rejected_logps": round(ref_rejected, 4),
            "chosen_length": chosen_length,
            "rejected_length": rejected_length,
        })
    return out


def render() -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records()).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_PATH, help="where to write (default: the "
                                                            "packaged file)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it (exit 1 if it "
                             "differs)")
    args = parser.parse_args(argv)
    data = render()
    if args.check:
        with open(args.out, "rb") as fh:
            same = fh.read() == data
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the script output'}")
        return 0 if same else 1
    with open(args.out, "wb") as fh:
        fh.write(data)
    print(f"wrote {os.path.normpath(args.out)} ({PAIRS} synthetic pairs, {len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
