"""Fake GPU nodes that kwok keeps alive: the shape of one 8-GPU H200 machine."""

from __future__ import annotations

from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPUS_PER_NODE = 8
# The taint GPU node pools carry so that only pods that tolerate it (GPU workloads) land there.
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Equal", "value": "present", "effect": "NoSchedule"}
NODE_LABELS = {
    "type": "kwok",
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
    "node.kubernetes.io/instance-type": "gpu-h200-8",
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H200",
    "nvidia.com/gpu.count": str(GPUS_PER_NODE),
}


def gpu_node_manifest(name: str) -> dict[str, Any]:
    """A Node that kwok manages (annotation kwok.x-k8s.io/node=fake) with 8 GPUs."""
    resources = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(GPUS_PER_NODE),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {**NODE_LABELS, "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [GPU_TAINT]},
        # Nodes accept status on create: capacity is what the scheduler fits GPU requests against.
        "status": {"capacity": resources, "allocatable": resources},
    }
