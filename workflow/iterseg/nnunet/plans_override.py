"""Configurable overrides of nnU-Net's plans: spacing, patch size, depth, width and batch size.

nnU-Net plans one network per dataset; a researcher sometimes needs a smaller or shallower one
(less GPU memory, a coarser target spacing). We edit the parsed ``nnUNetPlans.json`` of one
configuration, check the result the way nnU-Net's planner would have produced it, and leave
building the network to nnU-Net's own code.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from iterseg.errors import PlanOverrideError

logger = logging.getLogger(__name__)

#: arch_kwargs entries with one value per encoder stage (PlainConvUNet and the ResEnc variants).
PER_STAGE_KEYS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage")
#: arch_kwargs entries with one value per decoder stage (n_stages - 1).
PER_DECODER_STAGE_KEYS = ("n_conv_per_stage_decoder",)
#: The smallest U-Net nnU-Net builds: one downsampling step and one decoder stage.
MIN_STAGES = 2


@dataclass(frozen=True)
class PlansOverrides:
    """Values that replace what nnU-Net planned for one configuration; None keeps the plan.

    Attributes
    ----------
    spacing
        Target spacing in the order of the plans' ``spacing`` (z, y, x for 3d).
    patch_size
        Patch size in voxels, same axis order; divisible by the network's total stride per axis.
    n_stages
        Number of resolution stages; may only reduce the planned number.
    features_per_stage
        Feature maps per stage, one value per (possibly reduced) stage.
    batch_size
        Training batch size, at least 1.

    """

    spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    n_stages: int | None = None
    features_per_stage: tuple[int, ...] | None = None
    batch_size: int | None = None

    def is_empty(self) -> bool:
        """True when no value is overridden (the plans stay as nnU-Net made them)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str = "plans overrides") -> PlansOverrides:
        """Read overrides from a config mapping; lists become tuples.

        Parameters
        ----------
        data
            Keys ``spacing``, ``patch_size``, ``n_stages``, ``features_per_stage``,
            ``batch_size``; None or an empty mapping means no overrides.
        source
            Where ``data`` comes from, for error messages.

        Raises
        ------
        PlanOverrideError
            On an unknown key or a scalar where a list is expected. Values are checked
            against the plans by :func:`apply_plans_overrides`.

        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PlanOverrideError(
                f"{source}: expected a mapping of {_allowed_keys()}, got {type(data).__name__}."
            )
        allowed = {f.name for f in fields(cls)}
        problems = [f"unknown key {key!r} (allowed: {_allowed_keys()})" for key in data if key not in allowed]
        values: dict[str, Any] = {}
        for key in allowed & set(data):
            value = data[key]
            if key in ("spacing", "patch_size", "features_per_stage") and value is not None:
                if isinstance(value, str) or not isinstance(value, Sequence):
                    problems.append(f"{key} must be a list (one value per axis/stage), got {value!r}")
                    continue
                value = tuple(value)
            values[key] = value
        if problems:
            raise PlanOverrideError(f"{source}: " + "; ".join(problems) + ".")
        return cls(**values)


def _allowed_keys() -> str:
    return ", ".join(f.name for f in fields(PlansOverrides))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nearest_multiples(value: int, divisor: int) -> list[int]:
    below = (value // divisor) * divisor
    above = below + divisor
    return [v for v in (below, above) if v > 0]


def _total_strides(strides: Sequence[Any], n_stages: int, dim: int) -> list[int]:
    """Product of the strides along each axis over the first ``n_stages`` stages."""
    per_axis = [1] * dim
    for stride in list(strides)[:n_stages]:
        values = stride if isinstance(stride, Sequence) else [stride] * dim
        for axis, s in enumerate(values):
            per_axis[axis] *= int(s)
    return per_axis


def _check_positive_list(
    key: str, value: tuple[Any, ...], length: int, what: str, integer: bool, problems: list[str]
) -> bool:
    ok_type = _is_int if integer else _is_number
    kind = "positive integers" if integer else "positive numbers"
    if len(value) != length:
        problems.append(f"{key} has {len(value)} value(s) but must have {length} ({what}), got {list(value)}")
        return False
    if not all(ok_type(v) and v > 0 for v in value):
        problems.append(f"{key} must be {kind}, got {list(value)}")
        return False
    return True


def _checked_stages(overrides: PlansOverrides, planned_stages: int, problems: list[str]) -> int:
    """The number of stages to build: the override when it is valid, else the planned one."""
    value = overrides.n_stages
    if value is None:
        return planned_stages
    if not _is_int(value) or not MIN_STAGES <= value <= planned_stages:
        problems.append(
            f"n_stages must be an integer from {MIN_STAGES} to {planned_stages} (nnU-Net planned "
            f"{planned_stages} stages; stages can only be removed, their strides cannot be "
            f"invented), got {value!r}"
        )
        return planned_stages
    return value


def _check_patch(
    overrides: PlansOverrides,
    planned_patch: list[int],
    strides: Sequence[Any],
    n_stages: int,
    problems: list[str],
) -> None:
    """The patch size (overridden or planned) must be divisible by the network's total stride."""
    dim = len(planned_patch)
    patch = planned_patch
    if overrides.patch_size is not None and _check_positive_list(
        "patch_size", overrides.patch_size, dim, f"one per axis of this {dim}d configuration", True, problems
    ):
        patch = list(overrides.patch_size)
    divisors = _total_strides(strides, n_stages, dim)
    bad_axes = [axis for axis in range(dim) if patch[axis] % divisors[axis] != 0]
    if bad_axes:
        nearest = "; ".join(
            f"axis {axis}: {patch[axis]} -> {_nearest_multiples(patch[axis], divisors[axis])}"
            for axis in bad_axes
        )
        problems.append(
            f"patch_size {patch} must be divisible per axis by the network's total stride {divisors} "
            f"(with {n_stages} stages); nearest valid sizes: {nearest}"
        )


def _validated_stages(
    overrides: PlansOverrides, kwargs: Mapping[str, Any], planned_patch: list[int], where: str
) -> int:
    """Check every override against the resolved plan; the number of stages to build.

    Raises
    ------
    PlanOverrideError
        Listing every problem at once.

    """
    dim = len(planned_patch)
    problems: list[str] = []
    n_stages = _checked_stages(overrides, int(kwargs["n_stages"]), problems)
    if overrides.features_per_stage is not None:
        _check_positive_list(
            "features_per_stage",
            overrides.features_per_stage,
            n_stages,
            "one per stage, n_stages",
            integer=True,
            problems=problems,
        )
    if overrides.spacing is not None:
        _check_positive_list(
            "spacing", overrides.spacing, dim, f"one per axis of this {dim}d configuration", False, problems
        )
    _check_patch(overrides, planned_patch, kwargs["strides"], n_stages, problems)
    if overrides.batch_size is not None and not (_is_int(overrides.batch_size) and overrides.batch_size >= 1):
        problems.append(f"batch_size must be an integer >= 1, got {overrides.batch_size!r}")
    if problems:
        raise PlanOverrideError(f"{where}: " + "; ".join(problems) + ".")
    return n_stages


def _reduced_kwargs(kwargs: Mapping[str, Any], overrides: PlansOverrides, n_stages: int) -> dict[str, Any]:
    """The architecture's ``arch_kwargs`` cut to ``n_stages`` stages, with the overridden widths."""
    new_kwargs = copy.deepcopy(dict(kwargs))
    new_kwargs["n_stages"] = n_stages
    for key in PER_STAGE_KEYS:
        if isinstance(new_kwargs.get(key), list | tuple):
            new_kwargs[key] = list(new_kwargs[key])[:n_stages]
    for key in PER_DECODER_STAGE_KEYS:
        if isinstance(new_kwargs.get(key), list | tuple):
            new_kwargs[key] = list(new_kwargs[key])[: n_stages - 1]
    if overrides.features_per_stage is not None:
        new_kwargs["features_per_stage"] = list(overrides.features_per_stage)
    return new_kwargs


def _write_overrides(
    own: dict[str, Any],
    resolved: Mapping[str, Any],
    arch: dict[str, Any],
    overrides: PlansOverrides,
    n_stages: int,
) -> list[tuple[str, Any, Any]]:
    """Set the (validated) overrides in the configuration's own dict ``own``; the changes made."""
    changes: list[tuple[str, Any, Any]] = []

    def _set(key: str, value: Any) -> None:
        before = resolved.get(key)
        if before != value:
            changes.append((key, before, value))
        own[key] = value

    if overrides.spacing is not None:
        _set("spacing", [float(s) for s in overrides.spacing])
    if overrides.patch_size is not None:
        _set("patch_size", list(overrides.patch_size))
    if overrides.batch_size is not None:
        _set("batch_size", overrides.batch_size)
    if overrides.n_stages is not None or overrides.features_per_stage is not None:
        kwargs: dict[str, Any] = arch["arch_kwargs"]
        new_kwargs = _reduced_kwargs(kwargs, overrides, n_stages)
        for key, after in new_kwargs.items():
            if kwargs.get(key) != after:
                changes.append((f"architecture.arch_kwargs.{key}", kwargs.get(key), after))
        arch["arch_kwargs"] = new_kwargs
        own["architecture"] = arch
    return changes


def apply_plans_overrides(
    plans: dict[str, Any], configuration: str, overrides: PlansOverrides, source: str
) -> dict[str, Any]:
    """Return a deep copy of nnU-Net ``plans`` with ``overrides`` applied to ``configuration``.

    The configuration is resolved through nnU-Net's ``PlansManager`` (``inherits_from``) for
    validation; the changed values are written into the configuration's own dict, so a
    configuration that inherits gets its own ``architecture`` (nnU-Net merges inherited
    configurations key by key, not deeply).

    Parameters
    ----------
    plans
        The parsed ``nnUNetPlans.json`` (not modified).
    configuration
        The configuration to change, e.g. ``3d_fullres``.
    overrides
        The values to set.
    source
        Where the overrides come from, e.g. ``config nnunet.plans_overrides`` (for messages).

    Returns
    -------
    dict
        The new plans.

    Raises
    ------
    PlanOverrideError
        Listing every override that nnU-Net could not train with, and the allowed values.

    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    new_plans = copy.deepcopy(plans)
    if overrides.is_empty():
        return new_plans
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise PlanOverrideError(
            f"{source}: plans {plans.get('plans_name', '?')!r} have no configuration {configuration!r} "
            f"(available: {available}); set nnunet.configuration to one of them."
        )
    resolved = PlansManager(copy.deepcopy(plans)).get_configuration(configuration).configuration
    arch = copy.deepcopy(resolved["architecture"])
    where = f"{source} ({configuration!r} of plans {plans.get('plans_name', '?')!r})"
    n_stages = _validated_stages(overrides, arch["arch_kwargs"], list(resolved["patch_size"]), where)
    own: dict[str, Any] = new_plans["configurations"][configuration]
    changes = _write_overrides(own, resolved, arch, overrides, n_stages)
    for key, before, after in changes:
        logger.info("%s: %s %s -> %s", where, key, before, after)
    if not changes:
        logger.info("%s: overrides equal the planned values; plans unchanged", where)
    return new_plans


def count_parameters(plans: dict[str, Any], configuration: str, dataset_json: dict[str, Any]) -> int:
    """Number of parameters of the network nnU-Net would train for ``configuration``.

    The network is built by nnU-Net's own ``get_network_from_plans`` with the input channels
    of ``dataset_json`` (``determine_num_input_channels``, which also counts cascade inputs) and
    the label manager's segmentation heads (an ``ignore`` label is not an output).

    Parameters
    ----------
    plans
        The parsed (possibly overridden) ``nnUNetPlans.json``.
    configuration
        The configuration whose network to build.
    dataset_json
        The dataset's ``dataset.json`` (``channel_names`` and ``labels``).

    Returns
    -------
    int
        The number of parameters, trainable or not.

    Raises
    ------
    PlanOverrideError
        When nnU-Net cannot build the network from these plans.

    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = plans.get("plans_name", "?")
    try:
        manager = PlansManager(copy.deepcopy(plans))
        conf = manager.get_configuration(configuration)
        label_manager = manager.get_label_manager(dataset_json)
        network = get_network_from_plans(
            conf.network_arch_class_name,
            conf.network_arch_init_kwargs,
            conf.network_arch_init_kwargs_req_import,
            determine_num_input_channels(manager, conf, dataset_json),
            label_manager.num_segmentation_heads,
            allow_init=False,
            deep_supervision=True,
        )
    except Exception as error:  # nnU-Net signals bad plans with asserts, KeyErrors and TypeErrors
        raise PlanOverrideError(
            f"nnU-Net cannot build the {configuration!r} network of plans {name!r}: "
            f"{type(error).__name__}: {error}. Check nnunet.plans_overrides (n_stages, "
            "features_per_stage) or re-plan the dataset."
        ) from error
    return int(sum(p.numel() for p in network.parameters()))
