#!/usr/bin/python3
"""Do pretrained word vectors help a text classifier with few labels? Pretrained against scratch.

The task: name the WordNet 3.0 lexicographer file of a noun synset
(noun.animal, noun.artifact, noun.feeling, ...) from its definition alone:
the gloss before its first example, never the synset's own words. The
classes are the noun files with at least --test_per_class plus the largest
--shots synsets (report says which); synsets whose definition is shared by
another noun synset are left out (they would be ambiguous, or leak test
texts into training). A fixed, seeded test set of --test_per_class per
class; per seed, labelled training sets of each --shots per class drawn
from the rest (the smaller sets are the first rows of the larger).

The word vectors: gensim Word2Vec (skip-gram) trained here on unlabelled
text only, the glosses (definitions and examples) of WordNet's verbs,
adjectives and adverbs and of every noun synset outside the test set,
tokenised by the project's rules (common/text_tokenizer.h); no label is
used. Every arm is FINE_TUNE on a TEXT_CSV dataset with a WORD_VECTORS
backbone, mean pooling and a linear head, on the same texts and seeds:

  pretrained-frozen     the word2vec vectors, kept fixed (freeze FROZEN);
  pretrained-finetuned  the same vectors trained too, at
                        --finetune_lr_scale of the head's rate (FULL);
  scratch               the same words and dimension with random values
                        (normal, the pretrained vectors' per-dimension
                        spread, seeded), trained at the full rate (FULL):
                        the same architecture learning from the labels
                        alone.

Test accuracy per arm and shots, mean ± spread over seeds, seconds per job,
the job's unknown-token rate, and the gap pretrained minus scratch.

Usage (starts its own tlserve with one local worker on loopback):
  bench/text_study.py [--build_dir build] [--seeds 1,2,3] [--shots 5,20,100]
      [--out var/text_study]
  bench/text_study.py --prepare_only [--out var/text_study]
      (writes the CSVs and the vectors, prints the classes and sizes; needs
      no server)
"""

import argparse
import collections
import csv
import importlib.util
import json
import math
import os
import random
import re
import shutil
import statistics
import string
import sys
import tempfile
import time

from study_server import start_server, stop_server, wait

WORDNET = "/usr/share/wordnet"
# WordNet 3.0's lexicographer files by number (lexnames(5WN)); the noun
# files are 03-28. Debian's wordnet-base ships no lexnames file.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]
ARMS = ("pretrained-frozen", "pretrained-finetuned", "scratch")


# --- Tokenisation: common/text_tokenizer.h, ported ---

_ASCII_TOKEN = re.compile(r"[A-Za-z0-9']+")
_ASCII_WORD = frozenset(string.ascii_letters + string.digits)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_APOSTROPHES = {"'", "\u2019", "\u02bc"}
_LATIN1_SEPARATORS = frozenset((0xA0, 0xA1, 0xA7, 0xAB, 0xB6, 0xB7, 0xBB, 0xBF, 0xFEFF))


def _is_separator(cp):
    """Code points that end a token (apostrophes handled before)."""
    if cp < 0x80:
        return chr(cp) not in _ASCII_WORD
    if 0x80 <= cp <= 0x9F or cp in _LATIN1_SEPARATORS:
        return True
    if 0x2000 <= cp <= 0x206F:
        return cp not in (0x200C, 0x200D)
    if 0x2E00 <= cp <= 0x2E7F:
        return True
    if 0x3000 <= cp <= 0x303F:
        return not (0x3005 <= cp <= 0x3007 or 0x3021 <= cp <= 0x3035
                    or 0x303B <= cp <= 0x303C)
    if 0xFF01 <= cp <= 0xFF5E:
        return chr(cp - 0xFEE0) not in _ASCII_WORD
    return 0xFF5F <= cp <= 0xFF65


def tokenize(text, max_tokens=256):
    """The tokens the server makes of `text`: runs of word characters and
    apostrophes, outer apostrophes stripped, ASCII lowercased."""
    if text.isascii():  # all of WordNet: the same rules, faster
        tokens = [t.strip("'").lower() for t in _ASCII_TOKEN.findall(text)]
        return [t for t in tokens if t][:max(max_tokens, 0)]
    tokens, current = [], []

    def flush():
        token = "".join(current).strip("'").translate(_ASCII_LOWER)
        if token:
            tokens.append(token)
        current.clear()

    for ch in text:
        if ch in _APOSTROPHES:
            current.append("'")
        elif _is_separator(ord(ch)):
            flush()
        else:
            current.append(ch)
    flush()
    return tokens[:max(max_tokens, 0)]


# --- Data ---

def read_glosses(path):
    """(lex_filenum, definition, gloss) per synset of a WordNet data file:
    the gloss is what follows ' | ', the definition its part before the
    first example ('; "')."""
    synsets = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            head, bar, gloss = line.partition(" | ")
            if not bar:
                continue
            gloss = gloss.strip()
            definition = gloss.split('; "', 1)[0].strip()
            synsets.append((int(head.split()[1]), definition, gloss))
    return synsets


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def file_mib(path):
    return os.path.getsize(path) / (1 << 20)


def prepare(args, shots_list, seeds):
    """Writes under args.out: data/test.csv, data/train_s{seed}_k{shots}.csv,
    vectors/pretrained.bin and vectors/scratch.bin (word2vec binary), and
    prepare.json with the counts; prints a summary; returns the summary."""
    import numpy as np
    from gensim.models import KeyedVectors, Word2Vec

    started = time.monotonic()
    data_dir = os.path.join(args.out, "data")
    vectors_dir = os.path.join(args.out, "vectors")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(vectors_dir, exist_ok=True)

    nouns = read_glosses(os.path.join(WORDNET, "data.noun"))
    uses = collections.Counter(definition for _, definition, _ in nouns)
    by_class = collections.defaultdict(list)  # lex -> indices into nouns
    shared = 0
    for i, (lex, definition, _) in enumerate(nouns):
        if not definition or uses[definition] > 1:
            shared += 1
            continue
        by_class[lex].append(i)
    need = args.test_per_class + max(shots_list)
    kept = sorted(lex for lex, items in by_class.items() if len(items) >= need)
    dropped = sorted(lex for lex in by_class if lex not in kept)
    if len(kept) < 2:
        raise RuntimeError(f"only {len(kept)} noun classes have {need} synsets; lower "
                           f"--test_per_class or --shots")

    # The test set: fixed, whatever the seeds. The rest of each class is
    # its training pool.
    split_rng = random.Random(args.split_seed)
    test, pool = {}, {}
    for lex in kept:
        items = list(by_class[lex])
        split_rng.shuffle(items)
        test[lex] = items[:args.test_per_class]
        pool[lex] = items[args.test_per_class:]
    test_path = os.path.join(data_dir, "test.csv")
    write_csv(test_path, [(nouns[i][1], LEXNAMES[lex]) for lex in kept for i in test[lex]])
    train_paths, train_sizes = {}, {}
    for seed in seeds:
        rng = random.Random(seed)
        drawn = {lex: rng.sample(pool[lex], max(shots_list)) for lex in kept}
        for shots in shots_list:
            path = os.path.join(data_dir, f"train_s{seed}_k{shots}.csv")
            rows = [(nouns[i][1], LEXNAMES[lex]) for lex in kept for i in drawn[lex][:shots]]
            random.Random(seed * 1000 + shots).shuffle(rows)
            write_csv(path, rows)
            train_paths[f"{seed}/{shots}"] = path
            train_sizes[f"{seed}/{shots}"] = len(rows)

    # Unlabelled text: every gloss but the test synsets' (and any gloss
    # elsewhere whose definition is a test text).
    test_ids = {i for lex in kept for i in test[lex]}
    test_texts = {nouns[i][1] for i in test_ids}
    corpus, left_out = [], 0
    sources = [("noun", [s for i, s in enumerate(nouns) if i not in test_ids])]
    for part in ("verb", "adj", "adv"):
        sources.append((part, read_glosses(os.path.join(WORDNET, f"data.{part}"))))
    corpus_glosses = {}
    for part, synsets in sources:
        corpus_glosses[part] = 0
        for _, definition, gloss in synsets:
            if definition in test_texts:
                left_out += 1
                continue
            tokens = tokenize(gloss, max_tokens=1 << 20)
            if tokens:
                corpus.append(tokens)
                corpus_glosses[part] += 1
    corpus_tokens = sum(len(s) for s in corpus)

    w2v_started = time.monotonic()
    model = Word2Vec(sentences=corpus, vector_size=args.dim, window=args.window,
                     min_count=args.min_count, sg=1, epochs=args.w2v_epochs,
                     workers=args.w2v_workers, seed=args.split_seed)
    w2v_seconds = time.monotonic() - w2v_started
    vectors = model.wv
    pretrained_path = os.path.join(vectors_dir, "pretrained.bin")
    vectors.save_word2vec_format(pretrained_path, binary=True)

    # Scratch: the same words and dimension, random values with the
    # pretrained vectors' spread per dimension.
    spread = vectors.vectors.std(axis=0)
    random_values = np.random.default_rng(args.split_seed).normal(
        0.0, 1.0, vectors.vectors.shape).astype(np.float32) * spread.astype(np.float32)
    scratch = KeyedVectors(vector_size=args.dim, dtype=np.float32)
    scratch.add_vectors(list(vectors.index_to_key), random_values)
    scratch_path = os.path.join(vectors_dir, "scratch.bin")
    scratch.save_word2vec_format(scratch_path, binary=True)

    vocab = set(vectors.index_to_key)

    def unknown_rate(texts):
        tokens = [t for text in texts for t in tokenize(text)]
        return sum(t not in vocab for t in tokens) / max(len(tokens), 1), len(tokens)

    test_unknown, test_tokens = unknown_rate(nouns[i][1] for i in test_ids)
    largest = train_paths[f"{seeds[0]}/{max(shots_list)}"]
    with open(largest, encoding="utf-8") as f:
        train_unknown, _ = unknown_rate(row["text"] for row in csv.DictReader(f))

    summary = {
        "classes": [{"name": LEXNAMES[lex], "lex_filenum": lex, "synsets": len(by_class[lex]),
                     "test": len(test[lex]), "pool": len(pool[lex])} for lex in kept],
        "dropped_classes": [{"name": LEXNAMES[lex], "synsets": len(by_class[lex])}
                            for lex in dropped],
        "need_per_class": need,
        "noun_synsets": len(nouns),
        "shared_definitions_left_out": shared,
        "test_texts": len(test_ids),
        "test_tokens": test_tokens,
        "train_sizes": train_sizes,
        "corpus_glosses": corpus_glosses,
        "corpus_sentences": len(corpus),
        "corpus_tokens": corpus_tokens,
        "corpus_left_out_as_test_text": left_out,
        "vocab_size": len(vectors.index_to_key),
        "dim": args.dim,
        "word2vec": {"sg": 1, "window": args.window, "min_count": args.min_count,
                     "epochs": args.w2v_epochs, "workers": args.w2v_workers,
                     "seed": args.split_seed},
        "word2vec_seconds": w2v_seconds,
        "pretrained_std_mean": float(spread.mean()),
        "unknown_rate_test": test_unknown,
        "unknown_rate_train_largest": train_unknown,
        "prepare_seconds": time.monotonic() - started,
        "paths": {"test": test_path, "train": train_paths, "pretrained": pretrained_path,
                  "scratch": scratch_path},
        "mib": {"pretrained": file_mib(pretrained_path), "scratch": file_mib(scratch_path),
                "test": file_mib(test_path)},
    }
    with open(os.path.join(args.out, "prepare.json"), "w") as f:
        json.dump(summary, f, indent=1)

    print(f"{len(kept)} classes with at least {need} usable synsets "
          f"({shared} of {len(nouns)} noun synsets left out: definition shared):",
          file=sys.stderr)
    for c in summary["classes"]:
        print(f"  {c['name']:<20} {c['synsets']:>6} synsets, test {c['test']}, "
              f"pool {c['pool']}", file=sys.stderr)
    print("dropped (too few synsets): " + (", ".join(
        f"{c['name']} ({c['synsets']})" for c in summary["dropped_classes"]) or "none"),
        file=sys.stderr)
    print(f"test: {len(test_ids)} texts, {test_tokens} tokens; training sets: "
          + ", ".join(f"{shots}/class = {shots * len(kept)} texts" for shots in shots_list)
          + f" per seed ({len(seeds)} seeds)", file=sys.stderr)
    print(f"unlabelled corpus: {len(corpus)} glosses ("
          + ", ".join(f"{k} {v}" for k, v in corpus_glosses.items())
          + f"), {corpus_tokens} tokens; {left_out} left out as test texts", file=sys.stderr)
    print(f"word2vec (skip-gram, dim {args.dim}, window {args.window}, min_count "
          f"{args.min_count}, {args.w2v_epochs} epochs, {args.w2v_workers} workers): "
          f"{len(vocab)} words in {w2v_seconds:.1f} s; vectors {summary['mib']['pretrained']:.1f}"
          f" MiB each", file=sys.stderr)
    print(f"unknown tokens (Python port of the tokenizer): test {test_unknown:.3f}, "
          f"largest training set {train_unknown:.3f}", file=sys.stderr)
    print(f"prepared in {summary['prepare_seconds']:.0f} s under {args.out}", file=sys.stderr)
    return summary


# --- The study ---


def epochs_for(samples, batch_size, steps):
    """Epochs that make about `steps` optimizer steps, in [3, 100]: the
    smallest training sets would otherwise see a few dozen steps."""
    per_epoch = math.ceil(samples / batch_size)
    return min(max(math.ceil(steps / per_epoch), 3), 100)


def check_predict(client, model_id, test_path, job_accuracy):
    """Deploys a model and predicts the test texts through Predict(texts):
    its accuracy should be the job's test accuracy (up to ties)."""
    with open(test_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    client.deploy_model(model_id)
    hits = 0
    for start in range(0, len(rows), 64):
        batch = rows[start:start + 64]
        predictions = client.predict(model_id, texts=[r["text"] for r in batch], top_k=1)
        hits += sum(p.label == r["label"] for p, r in zip(predictions, batch))
    embedding = client.embed(model_id, texts=[rows[0]["text"]])
    client.undeploy_model(model_id)
    return {"model_id": model_id, "predict_accuracy": hits / len(rows),
            "job_test_accuracy": job_accuracy, "texts": len(rows),
            "embed_dim": len(embedding[0]) if embedding else 0}


def run_study(args, shots_list, seeds, prep):
    build_dir = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(build_dir, "python"))
    from tlserve_client import Client  # noqa: E402 (built into build/python)

    num_classes = len(prep["classes"])
    work = tempfile.mkdtemp(prefix="text_study_")
    server, address = start_server(build_dir, work, [f"--worker_threads={args.worker_threads}"])
    rows, check = [], None
    out_json = os.path.join(args.out, "text_study.json")

    def save():
        with open(out_json, "w") as f:
            json.dump({"args": vars(args), "prepare": prep, "rows": rows,
                       "predict_check": check}, f, indent=1)

    try:
        client = Client(address, timeout=60)
        client.wait_until_ready(60)
        backbones = {}
        for name in ("pretrained", "scratch"):
            backbone = client.upload_backbone(prep["paths"][name], f"wordnet-w2v-{name}",
                                              kind="word_vectors")
            backbones[name] = backbone.id
            print(f"backbone {name}: {backbone.id}, {backbone.vocab_size} words, "
                  f"dim {backbone.feature_dim}", file=sys.stderr)
        freeze = {
            "pretrained-frozen": ("pretrained", {"mode": "FROZEN"}),
            "pretrained-finetuned": ("pretrained", {"mode": "FULL", "backbone_lr_scale":
                                                    args.finetune_lr_scale}),
            "scratch": ("scratch", {"mode": "FULL", "backbone_lr_scale": 1.0}),
        }
        test_path = prep["paths"]["test"]
        for seed in seeds:
            for shots in shots_list:
                dataset = client.upload_dataset(prep["paths"]["train"][f"{seed}/{shots}"],
                                                f"wordnet-nouns-s{seed}-k{shots}",
                                                test=test_path)
                if (dataset.train_count != shots * num_classes
                        or len(dataset.class_names) != num_classes):
                    raise RuntimeError(f"dataset {dataset.id}: {dataset.train_count} texts in "
                                       f"{len(dataset.class_names)} classes, expected "
                                       f"{shots * num_classes} in {num_classes}")
                epochs = epochs_for(dataset.train_count, args.batch_size, args.steps)
                for arm in ARMS:
                    vectors, freeze_spec = freeze[arm]
                    job_started = time.monotonic()
                    job = wait(client, client.create_job(
                        kind="FINE_TUNE", display_name=f"{arm}-k{shots}-s{seed}",
                        backbone_id=backbones[vectors],
                        data={"dataset_id": dataset.id, "validation_fraction": 0.0},
                        freeze=freeze_spec, text={"pooling": "mean"},
                        optimizer={"kind": "ADAMW", "learning_rate": args.lr,
                                   "weight_decay": 1e-4},
                        schedule={"kind": "COSINE"}, epochs=epochs,
                        batch_size=args.batch_size, seed=seed))
                    result = job.result
                    rows.append({
                        "seed": seed, "shots": shots, "arm": arm, "epochs": epochs,
                        "accuracy": result.test_accuracy, "test_count": result.test_count,
                        "train_seconds": result.train_seconds,
                        "wall_seconds": time.monotonic() - job_started,
                        "unknown_token_rate": result.unknown_token_rate,
                        "model_id": result.model_id, "job_id": job.id})
                    save()
                    print(f"seed {seed} shots {shots} {arm}: accuracy "
                          f"{result.test_accuracy:.4f} on {result.test_count}, "
                          f"{result.train_seconds:.1f} s, unknown "
                          f"{result.unknown_token_rate:.3f}", file=sys.stderr)
        if args.check_predict and rows:
            last = [r for r in rows if r["arm"] == "pretrained-frozen"][-1]
            check = check_predict(client, last["model_id"], test_path, last["accuracy"])
            save()
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    return rows, check


def report(args, shots_list, seeds, prep, rows, check, seconds):
    def cell(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    def pick(arm, shots, key):
        return [r[key] for r in sorted(rows, key=lambda r: r["seed"])
                if r["arm"] == arm and r["shots"] == shots]

    epochs = {r["shots"]: r["epochs"] for r in rows}
    print(f"\nWordNet 3.0 noun definitions -> lexicographer file, "
          f"{len(prep['classes'])} classes, {args.test_per_class} test texts per class; "
          f"word2vec skip-gram dim {prep['dim']} ({prep['vocab_size']} words, "
          f"{prep['corpus_tokens']} unlabelled tokens, {prep['word2vec_seconds']:.0f} s); "
          f"mean pooling, linear head, AdamW lr {args.lr:g}, batch {args.batch_size}, "
          f"epochs {', '.join(f'{epochs[k]} at {k} shots' for k in shots_list if k in epochs)}; "
          f"seeds {seeds}; {seconds:.0f} s in all ({prep['prepare_seconds']:.0f} s "
          f"preparing)\n")
    print("| shots/class | arm | test accuracy | seconds per job (train) "
          "| unknown-token rate |")
    print("|---|---|---|---|---|")
    for shots in shots_list:
        for arm in ARMS:
            if not pick(arm, shots, "accuracy"):
                continue
            print(f"| {shots} | {arm} | {cell(pick(arm, shots, 'accuracy'))} "
                  f"| {statistics.mean(pick(arm, shots, 'wall_seconds')):.1f} "
                  f"({statistics.mean(pick(arm, shots, 'train_seconds')):.1f}) "
                  f"| {statistics.mean(pick(arm, shots, 'unknown_token_rate')):.3f} |")
    print("\npretrained minus scratch, test accuracy points (mean ± spread over seeds, "
          "paired by seed):")
    for shots in shots_list:
        scratch = pick("scratch", shots, "accuracy")
        parts = []
        for arm in ARMS[:2]:
            mine = pick(arm, shots, "accuracy")
            if mine and len(mine) == len(scratch):
                gaps = [100 * (a - b) for a, b in zip(mine, scratch)]
                parts.append(f"{arm} {statistics.mean(gaps):+.1f} ± "
                             f"{statistics.pstdev(gaps):.1f}")
        if parts:
            print(f"  {shots} shots/class: " + "; ".join(parts))
    if check:
        print(f"\nPredict(texts) on the test set with model {check['model_id']}: accuracy "
              f"{check['predict_accuracy']:.4f} (the job reported "
              f"{check['job_test_accuracy']:.4f}); Embed(texts) dim {check['embed_dim']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build_dir", default="build")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", default="5,20,100",
                        help="labelled texts per class, one arm set each")
    parser.add_argument("--test_per_class", type=int, default=100)
    parser.add_argument("--split_seed", type=int, default=0,
                        help="the test set, word2vec and the scratch vectors")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--min_count", type=int, default=2)
    parser.add_argument("--w2v_epochs", type=int, default=10)
    parser.add_argument("--w2v_workers", type=int, default=2,
                        help="1 makes word2vec reproducible, more is faster")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--finetune_lr_scale", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600,
                        help="optimizer steps per job, roughly (epochs in [3, 100])")
    parser.add_argument("--worker_threads", type=int, default=2)
    parser.add_argument("--no_check_predict", dest="check_predict", action="store_false",
                        help="skip deploying one model and predicting the test texts")
    parser.add_argument("--prepare_only", action="store_true",
                        help="write the CSVs and vectors to --out, print sizes, stop")
    parser.add_argument("--out", default="var/text_study")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    shots_list = sorted({int(s) for s in args.shots.split(",")})

    if not os.path.isfile(os.path.join(WORDNET, "data.noun")):
        print(f"SKIP: {WORDNET}/data.noun is missing (Debian: wordnet-base)")
        return 77
    if importlib.util.find_spec("gensim") is None:
        print("SKIP: gensim is missing (Debian: python3-gensim)")
        return 77
    started = time.monotonic()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    prep = prepare(args, shots_list, seeds)
    if args.prepare_only:
        return 0
    rows, check = run_study(args, shots_list, seeds, prep)
    report(args, shots_list, seeds, prep, rows, check, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
