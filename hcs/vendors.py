"""Vendor profiles: one table of everything that differs between accelerator vendors.

Device-plugin resource names depend on which plugin a site runs (the official one, HAMi, a
renamed time-slicing config), so the table is data with defaults from DESIGN §5 and can be
overridden from a YAML file:

    vendors:
      nvidia:
        resource: nvidia.com/gpu.shared
        aliases: [nvidia.com/gpu]

Only the fields given are replaced; unknown vendors or fields are a ConfigError, never ignored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from hcs.errors import ConfigError, QuantityError
from hcs.quantity import vram_mib

VendorName = Literal["nvidia", "huawei", "hygon", "cambricon"]
VENDOR_NAMES: Final[tuple[VendorName, ...]] = ("nvidia", "huawei", "hygon", "cambricon")
# The engine stores vendors as small integers; the code is the index in VENDOR_NAMES.
VENDOR_CODES: Final[dict[str, int]] = {name: i for i, name in enumerate(VENDOR_NAMES)}
ALL_VENDORS_MASK: Final = (1 << len(VENDOR_NAMES)) - 1


DRIVER_LIBRARY_ENV: Final = "HCS_DRIVER_LIBRARY_PATH"
"""The driver's library folders (`ld_library_path`), offered beside the image's own
LD_LIBRARY_PATH, which HCS never replaces unseen."""


@dataclass(frozen=True)
class HostMount:
    """A driver hostPath mounted, always read-only, into requesting containers: by the webhook
    (device plugin mode) or by the DRA driver's CDI edits."""

    name: str
    host_path: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class ShareTemplate:
    """A slice a chip can be cut into (Ascend's vNPU templates): its AI cores and memory."""

    name: str
    ai_cores: int
    memory_mib: int


@dataclass(frozen=True)
class ChipTemplates:
    """The templates of the chips whose model matches `model` (an fnmatch pattern), smallest
    first, and the chip's AI cores (a template's compute is its cores' part of the chip's)."""

    model: str
    ai_cores: int
    templates: tuple[ShareTemplate, ...]


@dataclass(frozen=True)
class VendorProfile:
    name: VendorName
    resource: str
    """Device-plugin resource the webhook sets as a limit (`nvidia.com/gpu: 2`)."""
    aliases: tuple[str, ...] = ()
    """Other resource names meaning whole devices of this vendor (fnmatch patterns allowed)."""
    device_env: str = ""
    """Env var naming the physical devices, filled from `hcs.io/assigned-devices`."""
    logical_env: str | None = None
    """Env var with logical indices 0..k-1, known at admission."""
    guard_env: tuple[str, str] | None = None
    """Env var set on containers that asked for nothing, so they cannot see every device."""
    extra_selection_envs: tuple[str, ...] = ()
    """Other env vars that select this vendor's devices and that HCS never sets (ROCm's
    `ROCR_VISIBLE_DEVICES` on Hygon): a container may set them only to a no-device value."""
    mounts: tuple[HostMount, ...] = ()
    ld_library_path: tuple[str, ...] = ()
    high_bandwidth_links: tuple[str, ...] = ()
    """Link types that form a high-bandwidth clique (NVLink, HCCS, ...)."""
    device_env_form: Literal["ids", "identities"] = "ids"
    """How the HCS device plugin writes `device_env` (NVIDIA: the GPUs' UUIDs, which survive
    re-indexing); the webhook's downward-API copy always holds the IDs of the same devices."""
    device_nodes: tuple[str, ...] = ()
    """Device nodes per chosen device, `{id}` (and `{render}` = 128 + id) filled in."""
    control_nodes: tuple[str, ...] = ()
    """Device nodes every container with devices of this vendor needs."""
    cdi_kind: str | None = None
    """CDI kind of the devices (`nvidia.com/gpu` -> `nvidia.com/gpu=<uuid>`), where a site
    runs CDI; the plugin names them with `--device-list-strategy cdi-cri|cdi-annotations`."""
    device_list_mounts: str | None = None
    """The folder whose mount points the vendor's container runtime reads as the device list
    (NVIDIA: `/var/run/nvidia-container-devices`, the `volume-mounts` strategy)."""
    runtime_class: str | None = None
    """RuntimeClass set on pods routed to this vendor (`hcs.io/inject-runtime`, default true),
    unless the pod names one: the vendor's container runtime then supplies the driver."""
    model_resources: tuple[tuple[str, str], ...] = ()
    """(model pattern, resource): models whose nodes advertise another resource than
    `resource` (Ascend 310P nodes: `huawei.com/Ascend310P`). The device plugin registers it,
    and the webhook adds it for pods routed to such nodes."""
    alias_models: tuple[tuple[str, str], ...] = ()
    """(resource name, model pattern): names that mean devices of one model family
    (`huawei.com/Ascend910B3` -> `Ascend910B3*`). The webhook rewrites them to the name the
    family's nodes advertise and the model becomes a placement constraint."""
    memory_resources: tuple[str, ...] = ()
    """HAMi's memory-per-device resources (MiB; fnmatch patterns), read as ai.compute/vram."""
    refused_resources: tuple[tuple[str, str], ...] = ()
    """(name pattern, what to ask instead): shares HCS cannot express (HAMi's core and
    percentage resources), refused by name."""
    share_templates: tuple[ChipTemplates, ...] = ()
    """Fixed slices per chip model (Ascend vNPU): on a node whose shares are kept by such
    templates, a share is booked as the smallest template that holds it."""

    def templates_for(self, model: str) -> ChipTemplates | None:
        """The share templates of chips of `model` (the first matching entry), or None."""
        return next((t for t in self.share_templates if fnmatch.fnmatchcase(model, t.model)), None)

    def resource_for(self, model: str) -> str:
        """The device-plugin resource that nodes of `model` advertise."""
        for pattern, resource in self.model_resources:
            if fnmatch.fnmatchcase(model, pattern):
                return resource
        return self.resource

    @property
    def selection_envs(self) -> tuple[str, ...]:
        """Every env var that selects this vendor's devices: the device env, the logical env
        and the extra ones. Only HCS may set them (`NO_DEVICE_VALUES` aside)."""
        names = (self.device_env, self.logical_env or "", *self.extra_selection_envs)
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Every whole-device resource name of the vendor (fnmatch patterns included)."""
        names = (self.resource, *self.aliases, *(r for _, r in self.model_resources))
        return tuple(dict.fromkeys(names))

    @property
    def advertised(self) -> tuple[str, ...]:
        """The names this vendor's nodes advertise (one per node model family)."""
        return tuple(dict.fromkeys((self.resource, *(r for _, r in self.model_resources))))

    def target(self, name: str) -> tuple[str | None, str | None]:
        """What a whole-device resource name asks for: (the advertised name it must be served
        as, or None for any family of the vendor; the model pattern, or None)."""
        model = next((m for a, m in self.alias_models if a == name), None)
        if name in self.advertised:
            return name, model
        if model is not None:
            return self.resource_for(model.rstrip("*?")), model
        return None, None

    def reads_memory(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.memory_resources)

    def refusal(self, name: str) -> str | None:
        """What to ask instead of `name`, when it is a share HCS cannot express."""
        return next(
            (why for p, why in self.refused_resources if fnmatch.fnmatchcase(name, p)), None
        )

    def owns_resource(self, resource: str) -> bool:
        """Whether `resource` is this vendor's whole-device resource (the default or an alias)."""
        if resource == self.resource:
            return True
        return any(fnmatch.fnmatchcase(resource, pattern) for pattern in self.aliases)


DEFAULT_PROFILES: Final[dict[VendorName, VendorProfile]] = {
    "nvidia": VendorProfile(
        name="nvidia",
        resource="nvidia.com/gpu",
        device_env="NVIDIA_VISIBLE_DEVICES",
        logical_env="CUDA_VISIBLE_DEVICES",
        # `void`: the NVIDIA runtime then injects nothing at all (no GPU, no driver files).
        guard_env=("NVIDIA_VISIBLE_DEVICES", "void"),
        mounts=(
            HostMount("nvidia-driver", "/usr/local/nvidia", "/usr/local/nvidia"),
            HostMount("nvidia-libraries", "/run/nvidia/driver", "/run/nvidia/driver"),
        ),
        ld_library_path=("/usr/local/nvidia/lib64",),
        high_bandwidth_links=("nvlink",),
        device_env_form="identities",
        cdi_kind="nvidia.com/gpu",
        device_list_mounts="/var/run/nvidia-container-devices",
        memory_resources=("nvidia.com/gpumem",),
        refused_resources=(
            (
                "nvidia.com/gpumem-percentage",
                "a percentage of each GPU's memory; ask ai.compute/vram",
            ),
            ("nvidia.com/gpucores", "a percentage of each GPU's cores; ask ai.compute/tflops-fp16"),
        ),
        runtime_class="nvidia",
    ),
    "huawei": VendorProfile(
        name="huawei",
        resource="huawei.com/Ascend910",
        # `huawei.com/ascend` is the spelling of the API reference's compatibility example.
        # Exact names, not a pattern: `Ascend910B*` would also match HAMi's `…-memory`
        # resources, and kube-scheduler's managedResources take exact names only.
        aliases=(
            "huawei.com/Ascend910A",
            "huawei.com/Ascend910B",
            "huawei.com/Ascend910B1",
            "huawei.com/Ascend910B2",
            "huawei.com/Ascend910B3",
            "huawei.com/Ascend910B4",
            "huawei.com/Ascend910C",
            "huawei.com/Ascend310P",
            "huawei.com/Ascend310",
            "huawei.com/ascend",
        ),
        # HAMi's and the 910B plugin's per-model names: a model family, served as the name the
        # family's nodes advertise (Ascend910 for the 910 family).
        alias_models=(
            ("huawei.com/Ascend910A", "Ascend910A*"),
            ("huawei.com/Ascend910B", "Ascend910B*"),
            ("huawei.com/Ascend910B1", "Ascend910B1*"),
            ("huawei.com/Ascend910B2", "Ascend910B2*"),
            ("huawei.com/Ascend910B3", "Ascend910B3*"),
            ("huawei.com/Ascend910B4", "Ascend910B4*"),
            ("huawei.com/Ascend910C", "Ascend910C*"),
            ("huawei.com/Ascend310P", "Ascend310P*"),
            ("huawei.com/Ascend310", "Ascend310"),
        ),
        memory_resources=("huawei.com/Ascend*-memory",),
        refused_resources=(
            (
                "huawei.com/Ascend*-core",
                "a share of each NPU's AI cores; ask ai.compute/tflops-fp16",
            ),
        ),
        device_env="ASCEND_VISIBLE_DEVICES",
        logical_env="ASCEND_RT_VISIBLE_DEVICES",
        guard_env=("ASCEND_VISIBLE_DEVICES", ""),
        mounts=(
            HostMount(
                "ascend-driver", "/usr/local/Ascend/driver", "/usr/local/Ascend/driver", True
            ),
            HostMount("ascend-dcmi", "/usr/local/dcmi", "/usr/local/dcmi", True),
            HostMount("ascend-npu-smi", "/usr/local/bin/npu-smi", "/usr/local/bin/npu-smi", True),
        ),
        ld_library_path=(
            "/usr/local/Ascend/driver/lib64/common",
            "/usr/local/Ascend/driver/lib64/driver",
        ),
        high_bandwidth_links=("hccs", "sio"),
        device_nodes=("/dev/davinci{id}",),
        control_nodes=("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
        model_resources=(
            ("Ascend310P*", "huawei.com/Ascend310P"),
            ("Ascend310", "huawei.com/Ascend310"),
        ),
        # vNPU templates (ASCEND_VNPU_SPECS) with the memory HAMi's Ascend plugin gives them
        # (docs/node.md, "Enforced shares"); `virNN` holds NN of the chip's AI cores.
        share_templates=(
            ChipTemplates(
                "Ascend310P*",
                8,
                (
                    ShareTemplate("vir01", 1, 3072),
                    ShareTemplate("vir02", 2, 6144),
                    ShareTemplate("vir04", 4, 12288),
                ),
            ),
            ChipTemplates(
                "Ascend910B3*",
                20,
                (
                    ShareTemplate("vir05_1c_16g", 5, 16384),
                    ShareTemplate("vir10_3c_32g", 10, 32768),
                ),
            ),
        ),
    ),
    "hygon": VendorProfile(
        name="hygon",
        resource="hygon.com/dcu",
        aliases=("hygon.com/dcunum", "hygon.com/hcu"),
        # The container sees only its own cards (/dev/dri nodes), and HIP counts within what
        # it sees: HIP_VISIBLE_DEVICES is logical, there is no physical-ID variable.
        device_env="",
        logical_env="HIP_VISIBLE_DEVICES",
        extra_selection_envs=("ROCR_VISIBLE_DEVICES",),
        memory_resources=("hygon.com/dcumem",),
        refused_resources=(
            ("hygon.com/dcucores", "a percentage of each DCU's cores; ask ai.compute/tflops-fp16"),
        ),
        device_nodes=("/dev/dri/card{id}", "/dev/dri/renderD{render}"),
        control_nodes=("/dev/kfd",),
        mounts=(
            HostMount("hygon-hyhal", "/opt/hyhal", "/opt/hyhal", True),
            HostMount("hygon-dtk", "/opt/dtk", "/opt/dtk"),
        ),
        ld_library_path=("/opt/hyhal/lib", "/opt/hyhal/lib64"),
        high_bandwidth_links=("xgmi",),
    ),
    "cambricon": VendorProfile(
        name="cambricon",
        resource="cambricon.com/mlu",
        # HAMi's names: `vmlu` (older charts) and `mlunum` with `mlumem` (MiB per MLU).
        aliases=("cambricon.com/mlu370", "cambricon.com/vmlu", "cambricon.com/mlunum"),
        alias_models=(("cambricon.com/mlu370", "MLU370*"),),
        memory_resources=("cambricon.com/mlumem",),
        refused_resources=(
            ("cambricon.com/mlu*.smlu.vmemory", "HAMi's MLU memory slices; ask ai.compute/vram"),
            (
                "cambricon.com/mlu*.smlu.vcore",
                "a percentage of each MLU's cores; ask ai.compute/tflops-fp16",
            ),
        ),
        device_env="CAMBRICON_VISIBLE_DEVICES",
        logical_env="MLU_VISIBLE_DEVICES",
        mounts=(HostMount("cambricon-neuware", "/usr/local/neuware", "/usr/local/neuware", True),),
        ld_library_path=("/usr/local/neuware/lib64",),
        high_bandwidth_links=("mlulink",),
        device_nodes=("/dev/cambricon_dev{id}",),
        control_nodes=("/dev/cambricon_ctl",),
    ),
}


# Values of a device-selection env that select no device, for every vendor: empty, the NVIDIA
# runtime's `void` (nothing injected) and `none` (driver files, no GPU), and the `-1` that CUDA,
# HIP and CNRT read as "no device". A container that asks for no device may set only these.
NO_DEVICE_VALUES: Final = frozenset({"", "void", "none", "-1"})


@dataclass(frozen=True)
class ImageRule:
    """An image built for one vendor, and its builds for others (`imageRules`). `image` is an
    exact name or a prefix ending in `*` (or any fnmatch pattern); a build ending in `*` takes
    what the prefix matched the rest of (the tag)."""

    image: str
    vendor: VendorName
    builds: Mapping[str, str] = field(default_factory=dict)

    def matches(self, image: str) -> bool:
        return fnmatch.fnmatchcase(image, self.image)

    def build_for(self, vendor: str, image: str) -> str | None:
        build = self.builds.get(vendor)
        if build is None or not build.endswith("*"):
            return build
        prefix = self.image.removesuffix("*")
        rest = image[len(prefix) :] if self.image.endswith("*") and image.startswith(prefix) else ""
        return build.removesuffix("*") + rest


# Images whose name says which vendor's software they carry: a pod without a preference goes
# to that vendor (a CUDA image does not land on Cambricon while GPUs are free).
DEFAULT_IMAGE_RULES: Final[tuple[ImageRule, ...]] = (
    ImageRule("nvcr.io/nvidia/*", "nvidia"),
    ImageRule("*cuda*", "nvidia"),
    ImageRule("vllm/vllm-openai*", "nvidia"),  # vLLM's published image is a CUDA build
    ImageRule("*ascend*", "huawei"),
    ImageRule("*cann*", "huawei"),
    ImageRule("*torch_npu*", "huawei"),
    ImageRule("*dtk*", "hygon"),
    ImageRule("*neuware*", "cambricon"),
    ImageRule("*cambricon*", "cambricon"),
)


@dataclass(frozen=True)
class VendorTable:
    """The profiles in force; look-ups by vendor name or by device-plugin resource name."""

    profiles: Mapping[VendorName, VendorProfile] = field(
        default_factory=lambda: dict(DEFAULT_PROFILES)
    )
    default_preference: tuple[VendorName, ...] = ()
    """Vendors for pods that name none and whose images imply none (`defaultVendorPreference`);
    empty: any vendor."""
    image_rules: tuple[ImageRule, ...] = field(default_factory=lambda: DEFAULT_IMAGE_RULES)

    def image_rule(self, image: str) -> ImageRule | None:
        return next((r for r in self.image_rules if r.matches(image)), None)

    def __getitem__(self, vendor: str) -> VendorProfile:
        return self.profiles[vendor]  # type: ignore[index]

    def domain_vendor(self, domain: str) -> VendorProfile | None:
        """The vendor whose resource names live under `domain` (`nvidia.com`), or None."""
        for profile in self.profiles.values():
            names = (*profile.advertised, *profile.aliases)
            if any(n.split("/", 1)[0] == domain for n in names):
                return profile
        return None

    def knows(self, resource: str) -> bool:
        """HCS reads, rewrites or refuses `resource` by name (the table's whole-device names,
        HAMi's memory and share names)."""
        return (
            self.vendor_of_resource(resource) is not None or self.hami_vendor(resource) is not None
        )

    def hami_vendor(self, resource: str) -> VendorProfile | None:
        """The vendor of a HAMi memory or refused share resource, or None."""
        for profile in self.profiles.values():
            if profile.reads_memory(resource) or profile.refusal(resource) is not None:
                return profile
        return None

    def vendor_of_resource(self, resource: str) -> VendorProfile | None:
        """The vendor whose whole-device resource this is, or None."""
        for profile in self.profiles.values():
            if profile.owns_resource(resource):
                return profile
        return None

    def selection_envs(self) -> dict[str, VendorProfile]:
        """Every device-selection env var of the table -> the vendor whose devices it selects."""
        return {env: p for p in self.profiles.values() for env in p.selection_envs}

    def all_link_types(self) -> frozenset[str]:
        return frozenset(t for p in self.profiles.values() for t in p.high_bandwidth_links)


def managed_resources(table: VendorTable) -> list[str]:
    """Every whole-device resource name of the table, for kube-scheduler's `managedResources`
    (a pod asking only for an alias must still reach the extender). Patterns in a site's
    aliases cannot be listed there: name those resources exactly."""
    names = []
    for profile in table.profiles.values():
        names += [profile.resource, *profile.aliases, *(r for _, r in profile.model_resources)]
    return [n for n in dict.fromkeys(names) if not any(ch in n for ch in "*?[")]


_OVERRIDABLE: Final = {
    "resource",
    "aliases",
    "deviceEnv",
    "logicalEnv",
    "guardEnv",
    "selectionEnvs",
    "mounts",
    "ldLibraryPath",
    "highBandwidthLinks",
    "deviceEnvForm",
    "deviceNodes",
    "controlNodes",
    "cdiKind",
    "deviceListMounts",
    "modelResources",
    "aliasModels",
    "memoryResources",
    "refusedResources",
    "runtimeClass",
    "shareTemplates",
}


def load_vendor_table(path: str | Path | None) -> VendorTable:
    """The default table, with the overrides of the YAML file at `path` applied."""
    if path is None:
        return VendorTable()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"vendor config {path}: {exc}") from exc
    return vendor_table_from_dict(data, source=str(path))


def vendor_table_from_dict(data: Any, source: str = "vendor config") -> VendorTable:
    if data is None:
        return VendorTable()
    if not isinstance(data, dict) or set(data) - {
        "vendors",
        "defaultVendorPreference",
        "imageRules",
    }:
        raise ConfigError(
            f"{source}: expected a mapping of `vendors`, `defaultVendorPreference`, `imageRules`"
        )
    vendors = data.get("vendors") or {}
    if not isinstance(vendors, dict):
        raise ConfigError(f"{source}: vendors: expected a mapping of vendor name to overrides")
    profiles: dict[VendorName, VendorProfile] = dict(DEFAULT_PROFILES)
    for name, overrides in vendors.items():
        if name not in DEFAULT_PROFILES:
            raise ConfigError(
                f"{source}: vendors.{name}: unknown vendor (expected one of "
                f"{', '.join(VENDOR_NAMES)})"
            )
        profiles[name] = _apply_overrides(profiles[name], overrides, f"{source}: vendors.{name}")
    default = data.get("defaultVendorPreference") or []
    if not isinstance(default, list) or any(v not in VENDOR_NAMES for v in default):
        raise ConfigError(
            f"{source}: defaultVendorPreference: expected a list of {', '.join(VENDOR_NAMES)}"
        )
    rules: tuple[ImageRule, ...] = DEFAULT_IMAGE_RULES
    if "imageRules" in data:
        rules = tuple(
            _image_rule(r, f"{source}: imageRules[{i}]")
            for i, r in enumerate(data["imageRules"] or [])
        )
    return VendorTable(profiles, tuple(default), rules)


def _image_rule(raw: Any, where: str) -> ImageRule:
    if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
        raise ConfigError(f"{where}: expected {{image, vendor, builds}}")
    if raw.get("vendor") not in VENDOR_NAMES:
        raise ConfigError(f"{where}.vendor: expected one of {', '.join(VENDOR_NAMES)}")
    builds = raw.get("builds") or {}
    if not isinstance(builds, dict) or any(
        k not in VENDOR_NAMES or not isinstance(v, str) for k, v in builds.items()
    ):
        raise ConfigError(f"{where}.builds: expected a mapping of vendor to image")
    return ImageRule(raw["image"], raw["vendor"], dict(builds))


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(value)


def _apply_overrides(profile: VendorProfile, overrides: Any, where: str) -> VendorProfile:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of fields")
    unknown = set(overrides) - _OVERRIDABLE
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))} "
            f"(expected {', '.join(sorted(_OVERRIDABLE))})"
        )
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        at = f"{where}.{key}"
        if key == "resource":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{at}: expected a non-empty string")
            changes["resource"] = value
        elif key == "deviceEnv":
            if not isinstance(value, str):
                raise ConfigError(f"{at}: expected a string (empty: no physical-ID variable)")
            changes["device_env"] = value
        elif key == "deviceEnvForm":
            if value not in ("ids", "identities"):
                raise ConfigError(f"{at}: expected ids or identities")
            changes["device_env_form"] = value
        elif key in ("modelResources", "aliasModels", "refusedResources"):
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
            ):
                what = {
                    "modelResources": "model pattern to resource name",
                    "aliasModels": "resource name to model pattern",
                    "refusedResources": "resource pattern to what to ask instead",
                }[key]
                raise ConfigError(f"{at}: expected a mapping of {what}")
            pairs = {"modelResources": "model_resources", "aliasModels": "alias_models"}
            changes[pairs.get(key, "refused_resources")] = tuple(value.items())
        elif key in ("cdiKind", "runtimeClass", "deviceListMounts"):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{at}: expected a string or null")
            names = {"cdiKind": "cdi_kind", "runtimeClass": "runtime_class"}
            changes[names.get(key, "device_list_mounts")] = value
        elif key == "logicalEnv":
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{at}: expected a string or null")
            changes["logical_env"] = value
        elif key == "guardEnv":
            if value is None:
                changes["guard_env"] = None
            elif (
                isinstance(value, dict)
                and set(value) == {"name", "value"}
                and all(isinstance(v, str) for v in value.values())
            ):
                changes["guard_env"] = (value["name"], value["value"])
            else:
                raise ConfigError(f"{at}: expected null or {{name: ..., value: ...}}")
        elif key == "mounts":
            changes["mounts"] = _mounts(value, at)
        elif key == "shareTemplates":
            changes["share_templates"] = _share_templates(value, at)
        else:
            attr = {
                "aliases": "aliases",
                "ldLibraryPath": "ld_library_path",
                "deviceNodes": "device_nodes",
                "controlNodes": "control_nodes",
                "selectionEnvs": "extra_selection_envs",
                "memoryResources": "memory_resources",
            }.get(key, "high_bandwidth_links")
            changes[attr] = _str_list(value, at)
    return replace(profile, **changes)


_TEMPLATES_EXPECTED: Final = (
    "a mapping of model pattern to {aiCores: N, templates: {name: {aiCores: N, memory: 16Gi}}}"
)


def _share_templates(value: Any, where: str) -> tuple[ChipTemplates, ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected {_TEMPLATES_EXPECTED}")
    chips = []
    for model, chip in value.items():
        at = f"{where}.{model}"
        if not isinstance(chip, dict) or set(chip) != {"aiCores", "templates"}:
            raise ConfigError(f"{at}: expected {{aiCores: N, templates: {{...}}}}")
        cores = _positive_int(chip["aiCores"], f"{at}.aiCores")
        if not isinstance(chip["templates"], dict) or not chip["templates"]:
            raise ConfigError(
                f"{at}.templates: expected a mapping of template name to "
                "{aiCores: N, memory: 16Gi}"
            )
        templates = []
        for name, t in chip["templates"].items():
            tat = f"{at}.templates.{name}"
            if not isinstance(t, dict) or set(t) != {"aiCores", "memory"}:
                raise ConfigError(f"{tat}: expected {{aiCores: N, memory: 16Gi}}")
            t_cores = _positive_int(t["aiCores"], f"{tat}.aiCores")
            if t_cores > cores:
                raise ConfigError(f"{tat}.aiCores: {t_cores} is more than the chip's {cores}")
            try:
                memory = vram_mib(t["memory"], f"{tat}.memory")
            except QuantityError as exc:
                raise ConfigError(exc.message) from exc
            if memory <= 0:
                raise ConfigError(f"{tat}.memory: must be more than 0")
            templates.append(ShareTemplate(str(name), t_cores, memory))
        templates.sort(key=lambda t: (t.memory_mib, t.ai_cores))
        chips.append(ChipTemplates(str(model), cores, tuple(templates)))
    return tuple(chips)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {value!r} must be a whole number above 0")
    return value


def _mounts(value: Any, where: str) -> tuple[HostMount, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{name, hostPath, mountPath, readOnly}}")
    mounts = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not {"name", "hostPath"} <= set(item):
            raise ConfigError(f"{at}: expected {{name, hostPath, mountPath, readOnly}}")
        read_only = item.get("readOnly", False)
        if not isinstance(read_only, bool):
            raise ConfigError(f"{at}.readOnly: expected true or false")
        mounts.append(
            HostMount(
                str(item["name"]),
                str(item["hostPath"]),
                str(item.get("mountPath", item["hostPath"])),
                read_only,
            )
        )
    return tuple(mounts)


def resource_name_rows(table: VendorTable) -> list[tuple[str, str, str]]:
    """(resource name, vendor, what HCS does with it): every name HCS reads, writes, rewrites or
    refuses, from the table (docs/webhook.md shows it; a test holds the two equal)."""
    rows: list[tuple[str, str, str]] = [
        (
            "ai.compute/vram, tflops-fp16, tflops-fp32, devices",
            "any",
            "read; requests and limits written equal, ai.compute/devices made explicit",
        )
    ]
    for p in table.profiles.values():
        models = dict(p.model_resources)
        for name in p.advertised:
            family = next((m for m, r in models.items() if r == name), None)
            what = (
                f"advertised by nodes of {family}" if family else "advertised by the vendor's nodes"
            )
            rows.append((name, p.name, f"{what}; written as the pod's limit, kept"))
        for alias in p.aliases:
            if alias in p.advertised:
                continue
            target, model = p.target(alias)
            if target is None:
                what = "rewritten to the name the node family the pod is placed in advertises"
            else:
                what = f"rewritten to {target}; devices of model {model} only"
            rows.append((alias, p.name, what))
        for name in p.memory_resources:
            rows.append((name, p.name, "HAMi MiB per device: read as ai.compute/vram, removed"))
        for name, why in p.refused_resources:
            rows.append((name, p.name, f"refused: {why}"))
    rows.append(
        (
            "any other name of a vendor's domain",
            "-",
            "refused in a pod the webhook sees: no node HCS manages advertises it",
        )
    )
    return rows


def resource_name_table(table: VendorTable) -> str:
    lines = ["| resource name | vendor | what HCS does |", "|---|---|---|"]
    lines += [f"| `{n}` | {v} | {w} |" for n, v, w in resource_name_rows(table)]
    return "\n".join(lines) + "\n"
