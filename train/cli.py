"""The `chimera` command: fit/validate (LightningCLI), data (synthetic worlds), generate."""

from __future__ import annotations

import argparse
import json
import os
import sys

from train.cli_errors import EXIT_STATUS, one_line, split_debug, user_errors

USAGE = """usage: chimera COMMAND ...

commands:
  fit        train from an experiment config   (chimera fit --config configs/experiments/X.yaml)
  validate   validate a config/checkpoint       (chimera validate --config X.yaml --ckpt_path CKPT)
  data       write a synthetic world            (chimera data sort-of-clevr|shapes --out DIR ...)
             or convert an official eval set    (chimera data vqav2|coco-captions|lavis-captions|karpathy|pope ...)
             or write EvalAI's VQAv2 answers    (chimera data vqav2-submission --predictions OUT/vqa.jsonl ...)
  generate   answer a prompt about an image     (chimera generate --ckpt CKPT --image IMG --prompt TEXT)
  pipeline   run staged experiments             (chimera pipeline run configs/pipelines/demo.yaml)
  merge      fold LoRA into dense weights       (chimera merge --ckpt CKPT --out DIR)
  eval       score a checkpoint on tasks        (chimera eval --config X.yaml --ckpt CKPT --tasks vqa --out DIR)
  export     write a release or an HF LLaVA dir (chimera export --ckpt CKPT --format chimera|hf-llava|hf-llava-onevision
                                                --out DIR)
  import     read HF LLaVA / OpenFlamingo       (chimera import --format hf-llava|hf-llava-onevision|openflamingo
                                                --src SRC --out DIR)
  curate     filter/dedup/mix shards            (chimera curate --config configs/curation/shapes.yaml --in SRC --out DST)
"""


def data_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chimera data", description="Write a synthetic world (images, "
                                     "LLaVA JSON, val_qa.jsonl, tokenizer) with a fixed seed.")
    sub = parser.add_subparsers(dest="world", required=True)
    soc = sub.add_parser("sort-of-clevr", help="Sort-of-CLEVR (Santoro et al. 2017)")
    soc.add_argument("--out", required=True)
    soc.add_argument("--train-images", type=int, default=9800)
    soc.add_argument("--val-images", type=int, default=200)
    soc.add_argument("--questions-per-image", type=int, default=10,
                     help="non-relational and relational questions per image (each)")
    soc.add_argument("--seed", type=int, default=0)
    soc.add_argument("--shards", action="store_true",
                     help="also write image-caption webdataset shards (shards/{train,val}-*.tar) for a clip stage")
    soc.add_argument("--shard-size", type=int, default=1000)
    soc.add_argument("--captions", action="store_true",
                     help="also a caption record per image (\"Describe the image.\" -> every object's colour, shape, position)")
    soc.add_argument("--style", default="paper", metavar="NAME",
                     help="rendering style, a name in data/sort_of_clevr.py's STYLES (a wrong name lists them); "
                     "paper: the original generator's pixels")
    soc.add_argument("--val-style", metavar="NAME", help="the val split's rendering style (default: --style)")
    soc.add_argument("--augment", action="store_true",
                     help="each training image in its own sampled style (size, antialiasing, noise: "
                     "data/sort_of_clevr.py AUGMENT); val stays in --val-style")
    shp = sub.add_parser("shapes", help="Shapes world: captions, VQA, POPE probes, webdataset shards")
    shp.add_argument("--out", required=True)
    shp.add_argument("--train-images", type=int, default=2000)
    shp.add_argument("--val-images", type=int, default=200)
    shp.add_argument("--seed", type=int, default=0)
    shp.add_argument("--max-objects", type=int, default=5)
    shp.add_argument("--shard-size", type=int, default=1000)
    hr = sub.add_parser("shapes-hr", help="Shapes-HR: small shapes on a 288 px canvas (unreadable at 72 px), "
                        "two-image questions, 4-frame clips")
    hr.add_argument("--out", required=True)
    hr.add_argument("--train-images", type=int, default=2000, help="also the number of two-image records and clips")
    hr.add_argument("--val-images", type=int, default=200)
    hr.add_argument("--seed", type=int, default=0)
    hr.add_argument("--captions", action="store_true",
                    help="a caption record per train image after its questions: every object, colour, shape and cell")
    vqa = sub.add_parser("vqav2", help="convert VQAv2 questions (+annotations; none for test-dev) to eval JSONL")
    vqa.add_argument("--questions", required=True)
    vqa.add_argument("--annotations", help="answers file; omit for test-dev/test (predicted, then vqav2-submission)")
    vqa.add_argument("--image-dir", default="")
    vqa.add_argument("--image-pattern", help="image file name from {image_id}; default: from data_subtype")
    vqa.add_argument("--out", required=True)
    sub_ = sub.add_parser("vqav2-submission", help="EvalAI's VQAv2 answer file from predictions")
    sub_.add_argument("--predictions", required=True, help="chimera eval's vqa.jsonl or a LLaVA answer file")
    sub_.add_argument("--questions", help="test2015 questions file: every question gets an entry ('' if not predicted)")
    sub_.add_argument("--id-field")
    sub_.add_argument("--text-field")
    sub_.add_argument("--out", required=True)
    coco = sub.add_parser("coco-captions", help="convert a COCO captions JSON (or LAVIS *_gt.json) to eval JSONL")
    coco.add_argument("--captions", required=True)
    coco.add_argument("--image-dir", default="")
    coco.add_argument("--image-pattern", help="image file name from {image_id}, for files without file_name (LAVIS gt)")
    coco.add_argument("--out", required=True)
    lavis = sub.add_parser("lavis-captions", help="convert a LAVIS caption annotation list (coco_karpathy_*.json)")
    lavis.add_argument("--annotations", required=True)
    lavis.add_argument("--image-dir", default="")
    lavis.add_argument("--out", required=True)
    karpathy = sub.add_parser("karpathy", help="convert Karpathy's dataset_coco.json (one or more splits)")
    karpathy.add_argument("--dataset", required=True)
    karpathy.add_argument("--split", nargs="+", required=True, metavar="SPLIT",
                          help="train, restval, val and/or test (LAVIS's train: train restval)")
    karpathy.add_argument("--image-dir", default="")
    karpathy.add_argument("--out", required=True)
    pope = sub.add_parser("pope", help="convert official POPE JSONL files (SPLIT=FILE ...) to eval JSONL")
    pope.add_argument("--splits", nargs="+", required=True, metavar="SPLIT=FILE")
    pope.add_argument("--image-dir", default="")
    pope.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.world == "vqav2-submission":
        from train.evaluation.vqav2_submission import write_vqav2_submission

        answered, written = write_vqav2_submission(args.predictions, args.out, args.questions, args.id_field,
                                                   args.text_field)
        print(f"wrote {written} answers ({answered} predicted) to {args.out}")
        return
    if args.world in ("vqav2", "coco-captions", "lavis-captions", "karpathy", "pope"):
        from data import eval_formats

        if args.world == "vqav2":
            n = eval_formats.convert_vqav2(args.questions, args.annotations, args.image_dir, args.out,
                                           args.image_pattern)
        elif args.world == "coco-captions":
            n = eval_formats.convert_coco_captions(args.captions, args.image_dir, args.out, args.image_pattern)
        elif args.world == "lavis-captions":
            n = eval_formats.convert_lavis_captions(args.annotations, args.image_dir, args.out)
        elif args.world == "karpathy":
            n = eval_formats.convert_karpathy(args.dataset, args.split, args.image_dir, args.out)
        else:
            if not all("=" in s for s in args.splits):
                parser.error(f"--splits takes SPLIT=FILE pairs, got {args.splits}")
            splits = dict(s.split("=", 1) for s in args.splits)
            n = eval_formats.convert_pope(splits, args.image_dir, args.out)
        print(f"wrote {n} records to {args.out}")
        return
    if args.world == "shapes-hr":
        from data.shapes_hr import write_shapes_hr

        summary = write_shapes_hr(args.out, train_images=args.train_images, val_images=args.val_images, seed=args.seed,
                                  captions=args.captions)
    elif args.world == "sort-of-clevr":
        from data.sort_of_clevr import write_sort_of_clevr

        summary = write_sort_of_clevr(args.out, train_images=args.train_images, val_images=args.val_images,
                                      seed=args.seed, questions_per_image=args.questions_per_image,
                                      shards=args.shards, shard_size=args.shard_size,
                                      captions=args.captions, style=args.style, val_style=args.val_style,
                                      augment=args.augment)
    else:
        from data.shapes import write_shapes

        summary = write_shapes(args.out, train_images=args.train_images, val_images=args.val_images,
                               seed=args.seed, max_objects=args.max_objects, shard_size=args.shard_size)
    print(json.dumps(summary, indent=2, default=str))


def generate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chimera generate", description="Answer a prompt about an image.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `chimera fit`, or a release directory")
    parser.add_argument("--image", help="image file (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    from train.generate import generate_answer

    print(generate_answer(args.ckpt, args.prompt, args.image, args.max_new_tokens))


def main(argv: list[str] | None = None) -> None:
    """The console script. From the shell a user error is one line on stderr and exit status 2
    (train/cli_errors.py); called from Python it raises, for the caller."""
    from_command_line = argv is None
    argv, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    if debug:
        os.environ["CHIMERA_DEBUG"] = "1"  # DDP re-launches this command: its ranks inherit it
    if from_command_line:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself (it warns when given both)
    command = argv[0] if argv else ""
    try:
        run_command(argv, from_command_line)
    except user_errors() as err:
        if debug or not from_command_line:
            raise
        print(one_line(command, err), file=sys.stderr)
        sys.exit(EXIT_STATUS)


def run_command(argv: list[str], from_command_line: bool = False) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in ("fit", "validate", "test", "predict"):
        from train.fit_cli import run_lightning_cli

        run_lightning_cli(None if from_command_line else [command, *rest])
    elif command == "data":
        data_main(rest)
    elif command == "generate":
        generate_main(rest)
    elif command == "pipeline":
        parser = argparse.ArgumentParser(prog="chimera pipeline", description="Run a staged pipeline.")
        parser.add_argument("action", choices=["run"])
        parser.add_argument("file", help="pipeline YAML, e.g. configs/pipelines/demo.yaml")
        parser.add_argument("--only", help="comma-separated stage names to run (others are left as they are)")
        args = parser.parse_args(rest)
        from train.pipeline import Pipeline

        Pipeline(args.file).run(args.only.split(",") if args.only else None)
    elif command == "merge":
        parser = argparse.ArgumentParser(prog="chimera merge", description="Fold a LoRA/QLoRA adapter into dense weights.")
        parser.add_argument("--ckpt", required=True)
        parser.add_argument("--out", required=True)
        args = parser.parse_args(rest)
        from train.merge import merge_checkpoint

        print(f"wrote {merge_checkpoint(args.ckpt, args.out)}")
    elif command == "eval":
        from train.evaluation.command import eval_main

        eval_main(rest)
    elif command in ("export", "import"):
        from train.export import export_main, import_main

        (export_main if command == "export" else import_main)(rest)
    elif command == "curate":
        from data.curation.curate import curate_main

        curate_main(rest)
    else:
        print(f"chimera: unknown command {command!r} (`chimera --help` lists them)", file=sys.stderr)
        sys.exit(EXIT_STATUS)


if __name__ == "__main__":
    main()
