"""Tools for people, outside the rules: demo data, SEG export, NIfTI to DICOM, SLURM, status, rollback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iterseg.cli.common import add_command, add_seg_options, seg_options

COMMANDS = ("demo-data", "export-seg", "nifti-to-dicom", "submit", "status", "rollback", "reconvert")


def cmd_demo_data(args: argparse.Namespace) -> None:
    """Write the synthetic demo dataset: CT, or with ``--mr`` two MR sequences named after the folder."""
    from iterseg.rawdata.demo import write_demo_dataset
    from iterseg.rawdata.demo_mr import write_demo_mr_dataset

    root = Path(args.directory)
    if args.mr:
        write_demo_mr_dataset(root, dataset=root.resolve().name)
    else:
        write_demo_dataset(root=root)


def cmd_export_seg(args: argparse.Namespace) -> None:
    """Write a label image as a DICOM-SEG of its reference series."""
    from iterseg.dicom.seg_writer import SegType, export_label_image

    export_label_image(
        reference=Path(args.reference), labels_path=Path(args.labels), roi_yaml=Path(args.roi_yaml),
        out=Path(args.out), modality=args.modality, series_uid=args.series_uid, seg_type=SegType(args.type),
        series_description=args.description, algorithm_version=args.algorithm_version,
        options=seg_options(args),
    )  # fmt: skip


def cmd_nifti_to_dicom(args: argparse.Namespace) -> None:
    """Write a NIfTI image as a DICOM series of new UIDs."""
    from iterseg.dicom.from_nifti import Modality, nifti_to_dicom

    written = nifti_to_dicom(
        Path(args.image), Path(args.out), Modality(args.modality), patient_id=args.patient_id,
        patient_name=args.patient_name, study_uid=args.study_uid, accession=args.accession,
        study_description=args.study_description, series_description=args.series_description,
        study_date=args.study_date, force=args.force,
    )  # fmt: skip
    sys.stdout.write(
        f"{len(written.files)} {written.modality} slices of series {written.series_uid} in {args.out}\n"
    )


def cmd_submit(args: argparse.Namespace) -> None:
    """Run snakemake as one SLURM job (it submits the fold jobs with the SLURM profile)."""
    from iterseg.cluster.slurm import submit_controller

    job = submit_controller(
        snakemake_args=_after_dashes(args.snakemake_args), log_dir=Path(args.log_dir),
        partition=args.partition, account=args.account, minutes=args.time, mem_gb=args.mem_gb,
        cpus=args.cpus, wait=args.wait,
    )  # fmt: skip
    sys.stdout.write(f"SLURM job {job.job_id}; log {job.log}\n")


def cmd_status(args: argparse.Namespace) -> None:
    """Print the dataset's iterations, the cases they skipped, and what to refine next."""
    from iterseg.release.promote import status_report

    sys.stdout.write(status_report(results=Path(args.results), dataset=args.dataset))


def cmd_rollback(args: argparse.Namespace) -> None:
    """Point ``latest`` back at an earlier finished iteration."""
    from iterseg.release.promote import rollback

    rollback(results=Path(args.results) / args.dataset, iteration=args.date, reason=args.reason)


def cmd_reconvert(args: argparse.Namespace) -> None:
    """Opt in to re-training an iteration on its snapshot's changed files: convert it again."""
    from iterseg.rawdata.fingerprint import forget_conversion

    forget_conversion(procdata=Path(args.procdata), dataset=args.dataset, date=args.date)


def _after_dashes(snakemake_args: list[str]) -> list[str]:
    """Snakemake's arguments: what follows ``--`` (argparse keeps the ``--`` in a REMAINDER)."""
    return snakemake_args[1:] if snakemake_args[:1] == ["--"] else list(snakemake_args)


def register(sub: argparse._SubParsersAction) -> tuple[str, ...]:
    """Add the tools' sub-commands to ``sub``; return their names, in help order."""
    adders = (_add_demo_data, _add_export_seg, _add_nifti_to_dicom, _add_submit, _add_status, _add_rollback,
              _add_reconvert)  # fmt: skip
    for add in adders:
        add(sub)
    return COMMANDS


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo-data", cmd_demo_data, "write the synthetic demo dataset (2 snapshots + inbox)")
    p.add_argument("directory", help="dataset folder to create, e.g. data/rawdata/demo")
    p.add_argument(
        "--mr", action="store_true",
        help="write the MR demo instead: one snapshot + inbox, each patient an AX FLAIR and a T1 AX "
        "series on another grid (config/demo_mr.yaml); the dataset is the folder's name, e.g. demo-mr",
    )  # fmt: skip


def _add_export_seg(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export-seg",
        cmd_export_seg,
        "write a label image as a DICOM-SEG of its DICOM series (also outside the workflow)",
    )
    p.add_argument(
        "--reference", required=True, help="folder with the DICOM image series the labels belong to"
    )
    p.add_argument(
        "--labels", required=True, help="label image (.nii.gz, .nrrd, .mha); values as in the ROI YAML"
    )
    p.add_argument("--roi-yaml", required=True, help="label names; file order gives the values 1, 2, ...")
    p.add_argument("--out", required=True, help="SEG file to write (nothing is written on error)")
    p.add_argument("--modality", choices=["CT", "MR", "PT"], help="only consider series of this modality")
    p.add_argument("--series-uid", help="the reference series, if the folder holds several on one grid")
    p.add_argument(
        "--type",
        default="binary",
        choices=["binary", "labelmap"],
        help="SegmentationType (labelmap: DICOM 2024)",
    )
    p.add_argument("--description", default="iterseg segmentation", help="SeriesDescription of the SEG")
    p.add_argument(
        "--algorithm-version", default="manual export", help="model identification recorded in each segment"
    )
    add_seg_options(p)


def _add_nifti_to_dicom(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "nifti-to-dicom",
        cmd_nifti_to_dicom,
        "write a NIfTI image as a DICOM CT or MR series of new UIDs (geometry and values exact), so its "
        "predictions can be exported as SEG and opened in a viewer or stored in a PACS",
    )
    p.add_argument("image", help="3D NIfTI image (.nii.gz, .nii; also .nrrd, .mha)")
    p.add_argument("--out", required=True, help="folder to write one .dcm per slice into (new or empty)")
    p.add_argument("--modality", required=True, choices=["CT", "MR"], help="CT: values are HU")
    p.add_argument("--patient-id", required=True, help="PatientID of the series")
    p.add_argument("--patient-name", help="PatientName, DICOM style: Family^Given")
    p.add_argument("--study-uid", help="StudyInstanceUID to add the series to (default: a new study)")
    p.add_argument("--study-description", default="", help="StudyDescription")
    p.add_argument("--series-description", default="", help="SeriesDescription")
    p.add_argument("--accession", default="", help="AccessionNumber (at most 16 characters)")
    p.add_argument("--study-date", help="StudyDate as YYYYMMDD (default: today)")
    p.add_argument(
        "--force", action="store_true", help="replace an --out folder that already holds .dcm files"
    )


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "submit",
        cmd_submit,
        "run the workflow as one SLURM job from a login node (submitit); arguments after -- go to snakemake",
    )
    p.add_argument("--partition", help="partition of the controller job (default: the cluster's)")
    p.add_argument("--account", help="account of the controller job")
    p.add_argument("--time", type=int, default=2880, help="minutes the controller may run")
    p.add_argument("--mem-gb", type=int, default=4)
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--log-dir", default="data/results/.submitit", help="the job's script, output and result")
    p.add_argument("--wait", action="store_true", help="wait for the job; fail if snakemake failed")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then snakemake's arguments")


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "status", cmd_status, "table of a dataset's finished iterations and which is `latest`"
    )
    p.add_argument("dataset")
    p.add_argument("--results", default="data/results")


def _add_rollback(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "rollback", cmd_rollback, "point `latest` back at an earlier finished iteration")
    p.add_argument("dataset")
    p.add_argument("date", nargs="?", help="iteration to point at (default: the one before `latest`)")
    p.add_argument("--results", default="data/results")
    p.add_argument("--reason", default="", help="recorded in latest_history.jsonl")


def _add_reconvert(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "reconvert",
        cmd_reconvert,
        "convert a snapshot changed after its conversion again: the next snakemake run re-trains its "
        "iteration and every later one on the changed files",
    )
    p.add_argument("dataset")
    p.add_argument("date", help="the snapshot's date, YYYY-MM-DD")
    p.add_argument("--procdata", default="data/procdata")
