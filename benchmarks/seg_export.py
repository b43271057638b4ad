"""Benchmark: iterseg's DICOM-SEG export vs dcmqi's itkimage2segimage, same input, same run.

A 512x512x200 int16 CT series with three labels (large, medium, tiny). iterseg is timed as the
workflow calls it (``export_label_image`` in-process, imports excluded); dcmqi as a whole
process, the way 3D Slicer and scripts call it. Both SEGs are read back with highdicom and
must equal the input labels voxel for voxel. Prints medians of ``--runs`` runs, the ratio and
the file sizes.

    .venv/bin/python benchmarks/seg_export.py [--runs 5] [--slices 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from geometry_corpus import SeriesSpec, write_series

BIN = Path(sys.executable).parent
ROI = "liver: ['^liver$']\nspleen: ['^spleen$']\ntumour: ['^tumou?r$']\n"


def labels_for(shape: tuple[int, int, int]) -> np.ndarray:
    """A large organ, a medium one and a tiny lesion."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2
    array = np.zeros(shape, np.uint8)
    array[
        ((z - c[0]) / (0.4 * shape[0])) ** 2 + ((y - c[1]) / 150) ** 2 + ((x - c[2] + 60) / 120) ** 2 < 1
    ] = 1
    array[
        ((z - c[0]) / (0.15 * shape[0])) ** 2 + ((y - c[1]) / 40) ** 2 + ((x - c[2] - 150) / 35) ** 2 < 1
    ] = 2
    array[((z - c[0]) / 2.5) ** 2 + ((y - c[1] - 20) / 4) ** 2 + ((x - c[2] + 40) / 4) ** 2 < 1] = 3
    return array


def dcmqi_export(series: Path, labels: Path, out: Path, tmp: Path) -> None:
    meta = {
        "ContentCreatorName": "benchmark",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "dcmqi",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "benchmark",
        "segmentAttributes": [
            [
                {
                    "labelID": value,
                    "SegmentLabel": name,
                    "SegmentAlgorithmType": "AUTOMATIC",
                    "SegmentAlgorithmName": "benchmark",
                    "SegmentedPropertyCategoryCodeSequence": {
                        "CodeValue": "91723000",
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Anatomical Structure",
                    },
                    "SegmentedPropertyTypeCodeSequence": {
                        "CodeValue": "85756007",
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Tissue",
                    },
                }
                for value, name in ((1, "liver"), (2, "spleen"), (3, "tumour"))
            ]
        ],
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    subprocess.run(
        [
            str(BIN / "itkimage2segimage"),
            "--inputImageList",
            str(labels),
            "--inputDICOMDirectory",
            str(series),
            "--outputDICOM",
            str(out),
            "--inputMetadata",
            str(tmp / "meta.json"),
        ],
        check=True,
        capture_output=True,
    )


def read_back(seg: Path, source: list[pydicom.Dataset]) -> np.ndarray:
    import highdicom as hd

    pixels = hd.seg.segread(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source],
        combine_segments=True,
        ignore_spatial_locations=True,  # dcmqi omits SpatialLocationsPreserved
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    from iterseg.dicom.seg_writer import export_label_image
    from iterseg.dicom.series import find_image_series

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        spec = SeriesSpec(rows=512, cols=512, slices=args.slices, pixel_spacing=(0.78, 0.78), slice_step=1.5)
        write_series(spec, tmp / "series")
        (series,) = find_image_series(tmp / "series", "CT")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in series.files])
        reader.SetImageIO("GDCMImageIO")
        ct = reader.Execute()
        truth = labels_for(sitk.GetArrayFromImage(ct).shape)
        labels = sitk.GetImageFromArray(truth)
        labels.CopyInformation(ct)
        sitk.WriteImage(labels, str(tmp / "labels.nii.gz"))
        (tmp / "roi.yaml").write_text(ROI)
        ours, theirs = [], []
        for run in range(args.runs):
            start = time.perf_counter()
            export_label_image(tmp / "series", tmp / "labels.nii.gz", tmp / "roi.yaml", tmp / "ours.dcm")
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            dcmqi_export(tmp / "series", tmp / "labels.nii.gz", tmp / "dcmqi.dcm", tmp)
            theirs.append(time.perf_counter() - start)
            print(f"run {run + 1}: iterseg {ours[-1]:.2f} s, dcmqi {theirs[-1]:.2f} s", flush=True)
        source = list(series.datasets)
        exact_ours = np.array_equal(read_back(tmp / "ours.dcm", source), truth)
        exact_dcmqi = np.array_equal(read_back(tmp / "dcmqi.dcm", source), truth)
        size_ours, size_dcmqi = (tmp / "ours.dcm").stat().st_size, (tmp / "dcmqi.dcm").stat().st_size
        syntax = pydicom.dcmread(tmp / "dcmqi.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID
        shutil.rmtree(tmp / "series")
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    voxels = ", ".join(f"{v}:{int((truth == v).sum())} vox" for v in (1, 2, 3))
    print(f"series 512x512x{args.slices} int16, labels: {voxels}")
    print(f"iterseg export_label_image  median {m_ours:.2f} s  size {size_ours / 1e6:.2f} MB  ", end="")
    print(f"exact {exact_ours}")
    print(
        f"dcmqi itkimage2segimage     median {m_theirs:.2f} s  size {size_dcmqi / 1e6:.2f} MB  "
        f"exact {exact_dcmqi}  ({syntax.name})"
    )
    print(f"time ratio iterseg/dcmqi: {m_ours / m_theirs:.2f}x   size ratio: {size_ours / size_dcmqi:.2f}x")


if __name__ == "__main__":
    main()
