"""``dftune export``: a verified, self-contained submission folder (plain HF model, int8, ONNX, script)."""

from __future__ import annotations

import argparse
import sys

from dftune.commands import add_parser, add_progress, defaults, group, positional_renamed


def register(sub) -> None:
    from dftune.stages.export import ExportSettings

    d = defaults(ExportSettings)
    p = add_parser(
        sub, "export", "write a verified submission folder: HF model + dftune.json + standalone script (int8, ONNX)",
        description="Write a self-contained submission folder: the Hugging Face model (loads with from_pretrained,\n"
        "no dftune needed), dftune.json, predict_submission.py (standalone: same results as `dftune predict`) and\n"
        "its README; --int8 / --onnx add those exports. Each is checked against the source model.",
        examples=("dftune export --model runs/ft/best --out submit/model/deep-fake-detector-v2-model",
                  "dftune export --model runs/ft/best --out submit/model/deep-fake-detector-v2-model --int8 --onnx"),
    )
    p.add_argument("--model", default=None, metavar="MODEL_DIR",
                   help="model folder to export (HF format, with dftune.json), or an ensemble.json / its folder "
                        "(each member exported under members/, the ensemble's threshold kept)")
    p.add_argument("--out", required=True, metavar="SUBMIT_DIR", help="submission folder to write")
    p.add_argument("--int8", action="store_true", help="add model_int8.pt: dynamic int8 quantization of Linear layers")
    p.add_argument("--onnx", action="store_true", help="add model.onnx (onnxruntime)")
    p.add_argument("--fake-label", default=None, help="name (or index) of the fake class, if the labels do not say")
    p.add_argument("--samples", nargs="*", default=[], metavar="IMAGE",
                   help="images or folders to verify the exports on (default: the model's own val crops when its "
                        "dftune.json names its training data; else synthetic images, a weak check that is flagged)")
    p.add_argument("--n-samples", type=int, default=d["n_samples"], help="how many sample images to verify on")
    p.add_argument("--tolerance", type=float, default=d["tolerance"],
                   help="largest |prob_fake difference| allowed for the plain folder (ONNX: 10x this)")
    p.add_argument("--int8-tolerance", type=float, default=d["int8_tolerance"],
                   help="largest |prob_fake difference| for int8")
    p.add_argument("--opset", type=int, default=d["opset"], help="ONNX opset")
    p.add_argument("--bench-seconds", type=float, default=d["bench_seconds"],
                   help="seconds of CPU timing per variant for images/s (0: skip)")
    p.add_argument("--force", action="store_true", help="replace SUBMIT_DIR if it exists")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="then upload the finished folder (model card README.md included) to this Hugging Face Hub "
                        "model repository, USER/NAME, made if missing, as one commit; the token is huggingface_hub's "
                        "(HF_TOKEN or `hf auth login`); offline (HF_HUB_OFFLINE) or without a token it is refused "
                        "before anything is written")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: a repository it makes is private")
    p.add_argument("positional_model", nargs="?", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the old spelling
    add_progress(p, default_text="on; export's steps take seconds and print no bar, accepted as every command "
                                 "takes it")
    group(p, {"model and folder": ["--model", "--out", "--force", "--fake-label"],
              "extra exports": ["--int8", "--onnx", "--opset"],
              "checks and timing": ["--samples", "--n-samples", "--tolerance", "--int8-tolerance", "--bench-seconds"],
              "publishing": ["--push-to-hub", "--private"]})
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from rich.table import Table

    from dftune.progress import console
    from dftune.stages import export

    positional_renamed(args.positional_model, "--model", "MODEL_DIR")
    if bool(args.model) == bool(args.positional_model):
        raise ValueError("give the model to export once: --model MODEL_DIR")
    args.model = args.model or args.positional_model
    s = export.ExportSettings(int8=args.int8, onnx=args.onnx, fake_label=args.fake_label, samples=args.samples,
                         n_samples=args.n_samples, tolerance=args.tolerance, int8_tolerance=args.int8_tolerance,
                         opset=args.opset, bench_seconds=args.bench_seconds, force=args.force,
                         push_to_hub=args.push_to_hub, private=args.private)
    from dftune.hub import HubError

    try:
        rep = export.run(args.model, args.out, s)
    except export.ExportError as e:
        console(stderr=True).print(f"[red]export failed:[/red] {e}")
        return 1
    except HubError as e:  # one line: offline, no token, or the upload failed (the folder is then complete)
        print(f"dftune export: error: {e}", file=sys.stderr)
        return 2
    con = console()
    t = Table(title=f"dftune export -> {rep['out']}  (CPU, {torch.get_num_threads()} threads, "
                    f"{rep['samples']} {rep['sample_source']} samples)")
    for c in ("variant", "MB", "agree", "max |Δp|", "tol", "img/s", "speed"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    t.add_row("source fp32", f"{rep['source_size_bytes'] / 1e6:.2f}", "", "", "",
              _f(rep["exports"]["plain"]["source_images_per_s"]), "1.00x")
    for name, c in rep["exports"].items():
        speed = c["images_per_s"]
        src = c["source_images_per_s"]
        ratio = speed / src if src == src and src else float("nan")
        t.add_row(name, f"{c['size_bytes'] / 1e6:.2f}", f"{c['label_agreement']:.1%}",
                  f"{c['max_prob_diff']:.2e}", f"{c['tolerance']:g}", _f(speed),
                  f"{ratio:.2f}x" if ratio == ratio else "not measured")
    con.print(t)
    if "pipeline" in rep:
        pl = rep["pipeline"]
        con.print(f"transformers.pipeline loads the folder: label agreement {pl['label_agreement']:.1%}, "
                  f"max |Δp| {pl['max_prob_diff']:.2e}")
    if "licence" in rep:  # a single model's export (an ensemble's members each have theirs)
        from dftune.model.card import licence_line

        print(licence_line({"licence": rep["licence"]}) + f" (model card: {rep['out']}/{export.README_NAME})")
    con.print(f"standalone script: {rep['out']}/{export.SCRIPT_NAME} + {export.PORTABLE_NAME} "
              f"(see {export.README_NAME}); "
              f"threshold {rep['threshold']:.4f}")
    if "hub" in rep:
        con.print(f"pushed to the Hub: {rep['hub']['repo']} ({rep['hub']['url']})")
    return 0


def _f(v: float) -> str:
    return "-" if v != v else f"{v:.1f}"
