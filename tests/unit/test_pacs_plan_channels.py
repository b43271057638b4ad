"""The pull's plan for a multi-sequence dataset: whole studies, checked against the channels, no PACS."""

from __future__ import annotations

from pathlib import Path

import pytest
from iterseg.convert.channels import parse_channels
from iterseg.pacs.inventory import Inventory, PacsAnnotation, PacsSeries, ProjectState
from iterseg.pacs.pull import describe_plan, inbox_folder, inbox_groups, inbox_study_folder, plan_pull

pytestmark = pytest.mark.unit

CHANNELS = parse_channels({"FLAIR": ["flair"], "T1": ["^t1"]})


def _mr(patient: str, uid: str, description: str, protocol: str = "", frame: str = "") -> PacsSeries:
    return PacsSeries(f"study-{patient}", uid, patient, "MR", description, protocol, frame)


def _seg(sop: str, image: PacsSeries) -> PacsAnnotation:
    seg = PacsSeries(image.study_uid, f"seg-{sop}", image.patient_id, "SEG", "Manual")
    return PacsAnnotation(seg, sop, (image.series_uid,), "Slicer", False)


def _inventory() -> tuple[Inventory, dict[str, PacsSeries]]:
    series = [
        _mr("A", "a-flair", "AX FLAIR"),
        _mr("A", "a-t1", "", protocol="T1_ax"),  # found by its ProtocolName
        _mr("A", "a-loc", "LOCALIZER"),  # matches no channel: pulled too, conversion ignores it
        _mr("B", "b-flair", "AX FLAIR"),  # annotated, no T1 on the PACS
        _mr("C", "c-flair", "AX FLAIR"),  # unannotated, complete: the inbox
        _mr("C", "c-t1", "T1 AX"),
        _mr("D", "d-flair", "AX FLAIR"),  # unannotated, two T1
        _mr("D", "d-t1", "T1 AX"),
        _mr("D", "d-t1b", "T1 AX repeat"),
        _mr("E", "e-flair", "AX FLAIR"),  # unannotated, already in the inbox
        _mr("E", "e-t1", "T1 AX"),
        _mr("F", "f-flair", "AX FLAIR"),  # unannotated, one series pulled before
        _mr("F", "f-t1", "T1 AX"),
        _mr("G", "g-flair", "AX FLAIR"),
        _mr("G", "g-t1", "T1 AX"),  # annotated on the T1: not the reference channel
        _mr("H", "h-flair", "AX FLAIR", frame="1.1"),  # frames listed, and different
        _mr("H", "h-t1", "T1 AX", frame="1.2"),
        _mr("I", "i-flair", "AX FLAIR", frame="1.3"),  # one frame not listed: the plan cannot tell
        _mr("I", "i-t1", "T1 AX"),
    ]
    images = {s.series_uid: s for s in series}
    annotations = tuple(
        _seg(f"seg-{uid}", images[uid]) for uid in ("a-flair", "b-flair", "g-t1", "h-flair", "i-flair")
    )
    return Inventory(images, annotations, 0), images


def test_whole_studies_are_planned_and_studies_that_do_not_fit_the_channels_named(tmp_path: Path) -> None:
    inventory, images = _inventory()
    inbox = tmp_path / "inbox"
    (inbox / inbox_study_folder(images["e-flair"])).mkdir(parents=True)
    state = ProjectState(pulled_images=frozenset({"f-t1"}))
    plan = plan_pull(inventory, state, inbox, False, CHANNELS)
    assert plan.study_wise and plan.channels == ("FLAIR", "T1")
    assert [a.sop_uid for a in plan.annotations] == ["seg-a-flair", "seg-i-flair"]
    assert [s.series_uid for s in plan.images] == ["a-flair", "a-t1", "a-loc", "i-flair", "i-t1"]
    assert [s.series_uid for s in plan.inbox] == ["c-flair", "c-t1"]
    assert inbox_groups(plan) == {inbox_study_folder(images["c-flair"]): [images["c-flair"], images["c-t1"]]}
    problems = {p.split("study study-")[1][0]: p for p in plan.problems}
    assert sorted(problems) == ["B", "D", "G", "H"]
    assert "patient B, study study-B" in problems["B"] and "no series for channel T1" in problems["B"]
    assert "'AX FLAIR', on the PACS" in problems["B"] and "Nothing of the study is pulled" in problems["B"]
    assert "of patient D (no annotation)" in problems["D"] and "2 series match channel T1" in problems["D"]
    assert "It goes to the inbox once" in problems["D"]
    assert "must be the reference channel FLAIR" in problems["G"]
    assert "frame of reference 1.2" in problems["H"] and "register the sequences" in problems["H"]


def test_describe_plan_lists_studies(tmp_path: Path) -> None:
    inventory, images = _inventory()
    lines = describe_plan(plan_pull(inventory, ProjectState(), tmp_path, False, CHANNELS), "http://pacs")
    text = "\n".join(lines)
    assert "of 5 image series (whole studies, for the channels FLAIR, T1)" in text
    assert "A: SEG seg-a-flair (Slicer), study study-A with its 3 image series ('AX FLAIR', 'T1_ax'" in text
    # C, E and F (nothing in the inbox, nothing pulled)
    assert "3 new studies without annotation (for the inbox, one folder each)" in text
    assert (
        f"C: study study-C, 2 MR series ('AX FLAIR', 'T1 AX') -> inbox/{inbox_study_folder(images['c-t1'])}"
        in text
    )
    assert sum(line.startswith("  left on the PACS: ") for line in lines) == 4


def test_one_channel_plans_series_as_before(tmp_path: Path) -> None:
    inventory, _ = _inventory()
    plain = plan_pull(inventory, ProjectState(), tmp_path, False)
    one = plan_pull(inventory, ProjectState(), tmp_path, False, CHANNELS[:1])
    assert one == plain and not plain.study_wise and not plain.problems
    assert [s.series_uid for s in plain.images] == ["a-flair", "b-flair", "g-t1", "h-flair", "i-flair"]
    assert "c-t1" in [s.series_uid for s in plain.inbox]
    assert list(inbox_groups(plain)) == [inbox_folder(s) for s in plain.inbox]
