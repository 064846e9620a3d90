from pathlib import Path

import pytest

from hcs.errors import ConfigError
from hcs.vendors import DEFAULT_PROFILES, VendorTable, load_vendor_table


def test_defaults_follow_the_design_table() -> None:
    table = VendorTable()
    assert table["nvidia"].resource == "nvidia.com/gpu"
    assert table["nvidia"].guard_env == ("NVIDIA_VISIBLE_DEVICES", "void")
    assert table["huawei"].logical_env == "ASCEND_RT_VISIBLE_DEVICES"
    # HIP counts within the cards the container sees: logical, no physical-ID variable.
    assert table["hygon"].logical_env == "HIP_VISIBLE_DEVICES" and table["hygon"].device_env == ""
    assert table.vendor_of_resource("huawei.com/Ascend910B4") is DEFAULT_PROFILES["huawei"]
    assert table.vendor_of_resource("huawei.com/ascend") is DEFAULT_PROFILES["huawei"]
    assert table.vendor_of_resource("hygon.com/hcu") is DEFAULT_PROFILES["hygon"]
    assert table.vendor_of_resource("cambricon.com/vmlu") is DEFAULT_PROFILES["cambricon"]
    assert table.vendor_of_resource("nvidia.com/gpumem") is None  # HAMi memory, not devices
    mounts = {m.host_path: m.read_only for m in table["huawei"].mounts}
    assert mounts["/usr/local/bin/npu-smi"] is True


def test_a_config_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "vendors.yaml"
    path.write_text(
        "vendors:\n"
        "  nvidia:\n"
        "    resource: nvidia.com/gpu.shared\n"
        "    aliases: [nvidia.com/gpu]\n"
        "  hygon:\n"
        "    guardEnv: {name: HIP_VISIBLE_DEVICES, value: ''}\n"
        "    mounts: [{name: dtk, hostPath: /opt/dtk-24.04, mountPath: /opt/dtk, readOnly: true}]\n"
    )
    table = load_vendor_table(path)
    assert table["nvidia"].resource == "nvidia.com/gpu.shared"
    assert table["nvidia"].device_env == "NVIDIA_VISIBLE_DEVICES"  # untouched
    assert table.vendor_of_resource("nvidia.com/gpu") is table["nvidia"]
    assert table["hygon"].guard_env == ("HIP_VISIBLE_DEVICES", "")
    assert table["hygon"].mounts[0].mount_path == "/opt/dtk"
    assert table["huawei"] == DEFAULT_PROFILES["huawei"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vendors:\n  amd: {resource: amd.com/gpu}\n", "vendors.amd: unknown vendor"),
        ("vendors:\n  nvidia: {resourse: x}\n", "unknown field(s) resourse"),
        ("vendors:\n  nvidia: {aliases: nvidia.com/gpu}\n", "aliases: expected a list of strings"),
        ("vendors:\n  nvidia: {resource: ''}\n", "resource: expected a non-empty string"),
        ("vendor: {}\n", "a mapping of `vendors`"),
        ("vendors: [\n", "vendors.yaml"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "vendors.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_vendor_table(path)
    assert fragment in str(info.value)
