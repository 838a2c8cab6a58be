"""How much of a training mix the first `train.max_steps` rows of a run cover.

Builds the packed dataset of a work dir's config the way `tunesmith train` does, takes the
rows of the trainer's seeded first-epoch order that the run's steps consume (batch size 1,
one process), and counts the distinct documents among them, for identity answers (they
name the assistant) and general ones, per language of the question:

    python bench/identity_coverage.py WORK/train/config.yaml --name Ada [overrides...]

e.g. `data.shuffle_before_pack=true data.cache_dir=/tmp/cov` to see the other packing.
"""

from __future__ import annotations

import argparse
import collections

from tunesmith.config.loader import load_config
from tunesmith.data.dataset import build_dataset
from tunesmith.data.fluency import language_of
from tunesmith.model.load import load_tokenizer
from tunesmith.train.recipe import epoch_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run's config.yaml (e.g. WORK/train/config.yaml)")
    parser.add_argument(
        "--name", required=True, help="the assistant's name, marks identity answers"
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    dataset = build_dataset(cfg, tokenizer, progress=False)
    steps = cfg.train.max_steps or len(dataset)
    order = epoch_order(cfg, 0, len(dataset)).tolist()[:steps]

    def kind(doc: int) -> tuple[str, str]:
        ids, labels = dataset.document(doc)
        answer = tokenizer.decode(ids[labels != -100].tolist())
        question = tokenizer.decode(ids[labels == -100].tolist()).rsplit("user", 1)[-1]
        return ("identity" if args.name in answer else "general", language_of(question))

    docs = collections.defaultdict(set)  # (kind, lang) -> distinct token sequences
    for d in range(dataset.num_documents):
        docs[kind(d)].add(tuple(dataset.document(d)[0].tolist()))
    seen, visits = collections.defaultdict(set), collections.Counter()
    for row in order:
        for d in dataset.documents_of_row(row):
            key = kind(d)
            seen[key].add(tuple(dataset.document(d)[0].tolist()))
            visits[key] += 1
    print(f"{len(dataset)} rows, {len(order)} trained")
    for key in sorted(docs):
        n, s = len(docs[key]), len(seen[key])
        print(
            f"{key[0]:9s} {key[1]}: {n:4d} distinct, {s:4d} seen ({s / n:.0%}), {visits[key]} visits"
        )


if __name__ == "__main__":
    main()
