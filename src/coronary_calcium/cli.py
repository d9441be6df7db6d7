"""`coronary-calcium`: the command line. Thin: each subcommand parses arguments and calls the package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from coronary_calcium.errors import InputError, find_user_error


def _cmd_validate(args: argparse.Namespace) -> int:
    from coronary_calcium.io.manifest import problems_error, validate_manifest
    from coronary_calcium.io.scans import check_scan_readable

    manifest, problems = validate_manifest(args.manifest, check_images=None if args.quick else check_scan_readable)
    if problems:
        raise problems_error(args.manifest, problems)
    assert manifest is not None
    counts = {s: len(manifest.split(s)) for s in ("train", "validation", "test")}
    patients = len({s.patient_id for s in manifest.scans})
    print(f"{manifest.path}: OK: {len(manifest.scans)} scans of {patients} patients; " f"splits {counts}")
    return 0


def _out_path(value: str | None, option: str = "--out") -> Path | None:
    """``value`` as a path; an empty string is refused (it would mean the current folder)."""
    if value is None:
        return None
    if not value.strip():
        raise InputError(option, "empty path: give the output path")
    return Path(value)


def _cmd_synth(args: argparse.Namespace) -> int:
    from coronary_calcium.synth.config import SynthConfig
    from coronary_calcium.synth.dataset import generate_dataset
    from coronary_calcium.synth.regenerate import regenerate_from_manifest

    if args.manifest is not None:
        if args.out is not None or args.patients is not None or args.seed is not None or args.config is not None:
            raise InputError("--manifest", "takes the set's parameters from the manifest: drop "
                             "--out/--patients/--seed/--config")
        made = regenerate_from_manifest(args.manifest, overwrite=args.overwrite, workers=args.workers)
        print(f"{args.manifest}: " + ("generated its data set" if made else "its data set is already there"))
        return 0
    out = _out_path(args.out)
    if out is None:
        raise InputError("synth", "give --out DIR (or --manifest MANIFEST)")
    fields = {}
    if args.config is not None:
        fields = _read_json_object(args.config)
    if args.if_missing and (out / "data_manifest.json").is_file():
        print(f"{out}: already holds a data set (drop --if-missing, add --overwrite to replace it)")
        return 0
    if args.family == "shifted":
        manifest = _synth_shifted(out, fields, args)
    else:
        if args.patients is not None:
            fields["n_patients"] = args.patients
        if args.seed is not None:
            fields["seed"] = args.seed
        manifest = generate_dataset(out, SynthConfig.from_dict(fields), overwrite=args.overwrite,
                                    workers=args.workers)
    print(f"wrote {manifest}")
    return 0


def _synth_shifted(out: Path, fields: dict, args: argparse.Namespace) -> Path:
    """The held-out family (`synth.shifted`): its own config fields; --patients / --seed override them."""
    from coronary_calcium.synth.shifted import ShiftedConfig, generate_shifted_dataset

    config = ShiftedConfig.from_dict(fields)
    return generate_shifted_dataset(out, n_patients=args.patients or config.n_patients,
                                    seed=config.seed if args.seed is None else args.seed,
                                    workers=args.workers or 2, overwrite=args.overwrite, config=config)


def _cmd_transfer(args: argparse.Namespace) -> int:
    from coronary_calcium.synth.shifted import generate_shifted_dataset
    from coronary_calcium.train.bundle import BUNDLE_ROOT
    from coronary_calcium.transfer import transfer_report

    manifest = args.manifest
    if manifest is None:  # the held-out shifted family, made once
        folder = _out_path(args.shifted_dir, "--shifted-dir")
        manifest = folder / "data_manifest.json"
        if not manifest.is_file():
            generate_shifted_dataset(folder, n_patients=args.patients, seed=args.seed, workers=2)
    ckpt_dir = args.ckpt_dir or BUNDLE_ROOT / "runs" / args.network / "models"
    result = transfer_report(ckpt_dir, manifest, _out_path(args.out), split=args.split, overwrite=args.overwrite,
                             progress=True)
    fig = result["figures"]
    print(f"{result['family']} ({len(result['scans'])} scans) scored with {ckpt_dir}: ICC(2,1) {fig['icc_2_1']}, "
          f"5-class linear kappa {fig['kappa_5class']}, lesion F1 {fig['lesion_f1']}, "
          f"calcium-free scored 0: {fig['zero_scored_zero']}, heavy below half their truth: {fig['heavy_below_half']}")
    print(f"report: {result['files']['markdown']}")
    return 0


def _read_json_object(path: Path) -> dict:
    import json

    if path.is_dir():
        raise InputError(path, "is a folder, not a JSON file of SynthConfig fields")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file: expected a JSON object of SynthConfig fields") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(value, dict):
        raise InputError(path, "must hold a JSON object of SynthConfig fields")
    return value


def _cmd_montage(args: argparse.Namespace) -> int:
    from coronary_calcium.synth.montage import write_montage

    out = write_montage(args.dataset, _out_path(args.out), n_slices=args.slices, seed=args.seed,
                        overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from coronary_calcium.train.bundle import parse_overrides, run_bundle, training_configs

    overrides = parse_overrides(args.set)
    overrides.update({k: v for k, v in (("network_name", args.network), ("max_epochs", args.epochs),
                                        ("manifest", args.manifest and str(args.manifest.resolve()))) if v is not None})
    evaluate = ["evaluate"] if args.command in ("evaluate", "cam-montage", "calibrate") else []
    configs = training_configs(overrides.get("network_name"), *evaluate)
    if args.command == "calibrate":
        overrides["run"] = ["@calibrate"]
        parser = run_bundle(configs, overrides)
        print(f"wrote {Path(parser.get_parsed_content('ckpt_dir')).resolve() / 'thresholds.json'}")
        return 0
    if args.command == "cam-montage":
        overrides["run"] = ["@cam_montage_png"]
        out = _out_path(args.out)
        if out is not None:
            if out.is_dir():
                raise InputError(out, "is a folder: give the PNG file to write, e.g. cam_montage.png")
            overrides["cam_montage_file"] = str(out.resolve())
        parser = run_bundle(configs, overrides)
        print(f"wrote {parser.get_parsed_content('cam_montage_file')}")
        return 0
    parser = run_bundle(configs, overrides)
    ids = ("output_dir", "ckpt_dir", "log_dir") + (("eval_dir",) if args.command == "evaluate" else ())
    paths = {k: Path(parser.get_parsed_content(k)).resolve() for k in ids}
    if args.command == "evaluate":
        import json

        split = parser.get_parsed_content("validate#split")
        m = json.loads((paths["eval_dir"] / f"{split}_metrics.json").read_text())
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
        print(f"{split} slices: {m['n']}  accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  "
              f"recall {m['recall']:.4f}  F1 {m['f1']:.4f}  ROC AUC {auc}")
        cm = m["confusion_matrix"]["rows_truth_cols_prediction"]
        print(f"confusion matrix (rows truth, columns prediction): {cm}")
    for k, v in paths.items():
        print(f"{k.replace('_dir', '').replace('ckpt', 'checkpoints')}: {v}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from coronary_calcium.inference import run_inference
    from coronary_calcium.train.bundle import BUNDLE_ROOT

    ckpt_dir = args.ckpt_dir or BUNDLE_ROOT / "runs" / args.network / "models"
    result = run_inference(args.input, _out_path(args.out), ckpt_dir=ckpt_dir, overwrite=args.overwrite,
                           split=args.split, rule=args.rule, dicom_out=args.dicom_out)
    print(f"{result.n_ok} scan(s) scored, {result.n_error} failed; summary: {result.summary_csv}")
    if result.report_html is not None:
        print(f"report: {result.report_html}")
    agreement = result.agreement or {}
    scores = agreement.get("scores")
    if scores:
        print(f"agreement with the reference ({scores['n']} scans): ICC(2,1) {scores['icc_2_1']}, "
              f"5-class linearly weighted kappa {scores['kappa']['5-class']['kappa_linear']:.3f}")
    lesions = agreement.get("lesions")
    if lesions:
        print(f"lesions: F1 {lesions['f1']}, sensitivity {lesions['sensitivity']}, PPV {lesions['ppv']}, "
              f"false positives per scan {lesions['false_positives_per_scan']:.2f}")
    if agreement.get("non_coronary_counted_as_coronary"):
        print(f"aortic / valve lesions counted as coronary: {agreement['non_coronary_counted_as_coronary']['lesions']}")
    if result.agreement_json is not None:
        print(f"agreement: {result.agreement_json}")
    return 0


def _add_bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", help="network id (default: the bundle's, inception_v3_scratch)")
    p.add_argument("--epochs", type=int, help="max_epochs")
    p.add_argument("--manifest", type=Path, help="data manifest (default: the repository's data_manifest.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any bundle config id, e.g. --set batch_size=8 --set 'hu_windows=[[-200,800]]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coronary-calcium",
        description="Coronary artery calcium in chest CT: data, training, explanation and scoring.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_infer_command(sub)
    _add_tool_commands(sub)
    p = sub.add_parser("cam-montage",
                       help="PNG of Grad-CAM overlays, rows = layers shallow to deep, for a trained network")
    _add_bundle_args(p)
    p.add_argument("--out", help="PNG path (default: <output_dir>/eval/cam_montage.png)")
    p.set_defaults(func=_cmd_train)
    return parser


def _add_data_commands(sub: Any) -> None:
    """validate, synth, transfer and montage."""
    p = sub.add_parser("validate", help="check a data manifest: schema, files, splits, readable images")
    p.add_argument("manifest", type=Path)
    p.add_argument("--quick", action="store_true", help="skip reading every image (schema, files, splits only)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("synth", help="generate a synthetic chest-CT data set with coronary calcium")
    p.add_argument("--out", help="output folder (with --manifest: defaults to its data_root)")
    p.add_argument("--manifest", type=Path, help="regenerate the set a manifest describes (its generator block)")
    p.add_argument("--patients", type=int, help="number of patients (default: the config's)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's)")
    p.add_argument("--config", type=Path, help="JSON file of SynthConfig fields")
    p.add_argument("--if-missing", action="store_true", help="with --out: do nothing when the folder holds a set")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument("--family", choices=("default", "shifted"), default="default",
                   help="the default generator, or the independently written held-out one (synth/shifted.py)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("transfer", help="a trained model on the other synthetic family: agreement report")
    p.add_argument("--out", required=True, help="report folder (transfer.md, transfer.json, inference/)")
    p.add_argument("--manifest", type=Path, help="the family to score (default: the shifted family in "
                   "--shifted-dir, generated when missing)")
    p.add_argument("--shifted-dir", default="data/shifted", help="where the shifted family is (default: %(default)s)")
    p.add_argument("--patients", type=int, default=24, help="shifted patients to generate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated shifted family (default: %(default)s)")
    p.add_argument("--network", default="inception_v3_scratch",
                   help="trained network id (finds bundle/runs/<id>/models)")
    p.add_argument("--ckpt-dir", type=Path, help="folder holding model.pt and thresholds.json (overrides --network)")
    p.add_argument("--split", help="only this split of the manifest (default: every scan)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report")
    p.set_defaults(func=_cmd_transfer)

    p = sub.add_parser("montage", help="write a PNG montage of synthetic slices with calcium and distractors")
    p.add_argument("dataset", type=Path, help="a synthetic data set folder or its manifest")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_montage)


def _add_training_commands(sub: Any) -> None:
    """train, evaluate and calibrate: the bundle's training config (plus evaluate.json)."""
    for name, text in (
        ("train", "train a classifier with the bundle (bundle/configs/train.json)"),
        ("evaluate", "evaluate the best checkpoint on the test patients (evaluate.json)"),
        ("calibrate", "fit the lesion classifier on the training and validation splits and choose the inference "
                      "thresholds on out-of-fold validation probabilities (thresholds.json)"),
    ):
        p = sub.add_parser(name, help=text)
        _add_bundle_args(p)
        p.set_defaults(func=_cmd_train)


def _add_infer_command(sub: Any) -> None:
    p = sub.add_parser("infer", help="score scans: slice probabilities, CAMs, lesions, Agatston per scan, report")
    p.add_argument("input", type=Path,
                   help="a manifest, a DICOM series folder, a NIfTI/MetaImage file, or a folder of scans")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--network", default="inception_v3_scratch",
                   help="trained network id (finds bundle/runs/<id>/models)")
    p.add_argument("--ckpt-dir", type=Path, help="folder holding model.pt and thresholds.json (overrides --network)")
    p.add_argument("--split", help="with a manifest: only this split")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--rule", help="decision rule: 'classifier' (the lesion classifier) or 'slice-cam' (slice "
                   "probability and CAM score, e.g. for phantoms, unlike the training anatomy); default: the "
                   "thresholds file's")
    p.add_argument("--dicom-out", action="store_true",
                   help="per scored DICOM series also write calcium_seg.dcm (DICOM SEG of the kept lesions, one "
                   "segment per artery) and calcium_sr.dcm (Comprehensive 3D SR: Agatston per artery and total, "
                   "volume, mass, risk category), both referencing the source series")
    p.set_defaults(func=_cmd_infer)


def _add_tool_commands(sub: Any) -> None:
    """experiment, pack and check-bundle (their arguments live beside their code)."""
    from coronary_calcium.experiment import add_experiment_arguments, cmd_experiment
    from coronary_calcium.zoo import add_check_arguments, add_pack_arguments, cmd_check_bundle, cmd_pack

    for name, text, add_arguments, func in (
        ("experiment", "the paper's five configurations trained and evaluated, one report", add_experiment_arguments,
         cmd_experiment),
        ("pack", "zip the bundle (with the package) for use elsewhere", add_pack_arguments, cmd_pack),
        ("check-bundle", "the MONAI Model Zoo's offline checks on bundle/", add_check_arguments, cmd_check_bundle),
    ):
        p = sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=func)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input (an `InputError` or an OS error about a path) prints one `error: <item>: <problem>`
    line and exits with status 2; any other error one line and status 1. `--debug` shows the traceback."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.debug:  # per-scan failures log their traceback at debug level
        import logging

        logging.basicConfig(level=logging.INFO)
        logging.getLogger("coronary_calcium").setLevel(logging.DEBUG)
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - bad input reaches us wrapped by MONAI's config parser and Ignite
        if args.debug:
            raise
        err = find_user_error(e)
        if err is not None:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"error: {args.command}: internal error ({type(e).__name__}: {_first_line(e)}); rerun with --debug "
              "for the traceback", file=sys.stderr)
        return 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


if __name__ == "__main__":
    sys.exit(main())
