"""HAMi-core's contract from a container's booking (hcs.limiter), device by device."""

from __future__ import annotations

from hcs.demand import ContainerDemand, parse_pod
from hcs.limiter import DeviceSize, hami_core, is_share

A100 = DeviceSize(vram_mib=80 * 1024, fp16_milli_tflops=312_000)
KW = {
    "library_dir": "/opt/vgpu",
    "container_dir": "/s/c/u_c",
    "lock_dir": "/s/l",
    "preload_file": "/s/p",
}


def container(limits: dict[str, str]) -> ContainerDemand:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }
    (c,) = parse_pod(pod).containers
    return c


def test_two_devices_get_one_limit_each_and_the_compute_share() -> None:
    c = container(
        {"ai.compute/vram": "40Gi", "ai.compute/devices": "2", "ai.compute/tflops-fp16": "156"}
    )
    out = hami_core(c, [A100, A100], **KW)
    assert out is not None
    assert out.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "20480m"  # 40Gi over two devices
    assert out.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "20480m"
    assert out.envs["CUDA_DEVICE_SM_LIMIT"] == "25"  # 78 of 312 TFLOPS per device
    assert ("/usr/local/vgpu/libvgpu.so", "/opt/vgpu/libvgpu.so", True) in out.mounts
    assert ("/etc/ld.so.preload", "/s/p", True) in out.mounts


def test_whole_devices_get_no_limit() -> None:
    assert hami_core(container({"nvidia.com/gpu": "1"}), [A100], **KW) is None
    full = container({"ai.compute/vram": "80Gi"})
    assert not is_share(full, [A100])
    assert hami_core(full, [A100], **KW) is None
