"""How a model's workers are laid out per role (parallelism, instances per node, DP) and how Mooncake is set up.

``RoleSettings`` is a model's ``prefill`` / ``decode`` section; every key left out takes the model's own key
(the CVS format's one ``tensor_parallelism`` stays valid). ``Layout`` is the resolved result the plan reads
(``ModelConfig.layout(role)``). ``MooncakeSettings`` is ``kv_transfer.mooncake``: what SGLang's PD Mooncake
engine reads (``MOONCAKE_PROTOCOL`` / ``MC_FORCE_TCP``, ``MC_GID_INDEX``, the per-GPU ``--disaggregation-ib-device``
map); a seed-style ``mooncake.json`` given there is translated into those keys (``translate_mooncake_json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import releases
from .keys import BOOL_OR_INT, INT, STRING_MAP, Kind, Problem, choice, count, json_path, key

ROLES = ("prefill", "decode")
DISAGGREGATED, AGGREGATED = "disaggregated", "aggregated"  # a model's mode; "aggregated" is also its one role
DECODE_ALONE = "decode_alone"  # a model's mode: decode workers only, on the fake transfer backend
# --load-balance-method's choices in any known release (the plan checks them against the planned release)
LOAD_BALANCE_METHODS = tuple(dict.fromkeys(m for methods in releases.LOAD_BALANCE_METHODS.values() for m in methods))
_WORKER = "worker argv"


@dataclass(frozen=True)
class RoleSettings:
    """A model's ``prefill`` or ``decode`` section; None: the model's key of the same name."""

    tensor_parallelism: int | None = count("tensor_parallelism", None, f"the role's {_WORKER} --tp-size "
                                           "(x nodes in multi_node)", default_doc="the model's tensor_parallelism")
    instances_per_node: int = count("instances_per_node", 1, "instances of the role on each of its nodes (per_node "
                                    "layout): --base-gpu-id 0, G, 2G, ... (G: an instance's GPUs), ports +1 each "
                                    "(+10 with DP attention, clear of SGLang's derived ports)")
    dp_size: int | None = count("dp_size", None, "DP ranks of each instance: --attn-dp-size (dp_attention) or "
                                "--dp-size (replicas)", default_doc="the model's dp_size")
    dp_attention: bool | int | None = key("dp_attention", None, BOOL_OR_INT, "DP attention over dp_size ranks inside "
                                          "the TP group (0.5.23 --attn-dp-size N, 0.5.7 --dp-size N "
                                          "--enable-dp-attention); an integer N: dp_size N with DP attention",
                                          minimum=1, default_doc="the model's dp_attention")
    load_balance_method: str | None = key("load_balance_method", None, choice(*LOAD_BALANCE_METHODS),
                                          f"{_WORKER} --load-balance-method (the DP rank of a request; "
                                          "the choices of the planned release)",
                                          default_doc="the model's; unset: SGLang's auto")


@dataclass(frozen=True)
class Layout:
    """One role's resolved layout for one model."""

    role: str
    tensor_parallelism: int  # per node of an instance
    instances_per_node: int
    dp_size: int
    dp_attention: bool
    load_balance_method: str | None

    @property
    def gpus(self) -> int:
        """GPUs an instance takes on each of its nodes: DP attention splits the TP group, plain DP replicates it."""
        return self.tensor_parallelism * (1 if self.dp_attention else self.dp_size)

    @property
    def port_step(self) -> int:
        """Serving / bootstrap port distance between instances on one node. With DP attention SGLang 0.5.23 also
        listens on --port + 13 and --port + 233..240 (srt/server_args.py PortArgs.init_new): +10 keeps apart."""
        return 10 if self.dp_attention and self.dp_size > 1 else 1

    def describe(self) -> str:
        """E.g. ``2 x TP4 per node`` or ``1 x TP8 per node, DP attention 16``."""
        dp = f", {'DP attention' if self.dp_attention else 'DP replicas'} {self.dp_size}" if self.dp_size > 1 else ""
        return f"{self.instances_per_node} x TP{self.tensor_parallelism} per node{dp}"


def resolve(role: str, section: RoleSettings, model: Any) -> Layout:
    """The role's section over the model's keys (``tensor_parallelism``, ``dp_size``, ``dp_attention``,
    ``load_balance_method``)."""
    def counted(attention: Any) -> int | None:  # an integer dp_attention N: dp_size N with DP attention
        return attention if isinstance(attention, int) and not isinstance(attention, bool) else None

    attention = section.dp_attention if section.dp_attention is not None else model.dp_attention
    dp_size = section.dp_size or counted(section.dp_attention) or model.dp_size or counted(model.dp_attention) or 1
    return Layout(role=role, tensor_parallelism=section.tensor_parallelism or model.tensor_parallelism,
                  instances_per_node=section.instances_per_node, dp_size=dp_size, dp_attention=bool(attention),
                  load_balance_method=section.load_balance_method or model.load_balance_method)


def role_nodes(cfg: Any, role: str) -> tuple[str, ...]:
    """The nodes a role's instances run on: its node list; aggregated workers on every worker node, each once."""
    if role == AGGREGATED:
        return tuple(dict.fromkeys((*cfg.prefill_nodes, *cfg.decode_nodes)))
    return getattr(cfg, f"{role}_nodes")


def key_path(model_path: str, role: str, section: RoleSettings, name: str) -> str:
    """Where a resolved value was set: the role's section, else the model's key."""
    if getattr(section, name) is not None:
        return json_path(json_path(model_path, role), name)
    return json_path(model_path, name)


# --------------------------------------------------------------------------------------- Mooncake
SYSFS = "sysfs"  # device_map: each node's GPU -> NIC map from its PCIe topology (nic.SYSFS_MAP_PROGRAM)
DEVICE_MAP = Kind("object of strings, or \"sysfs\"", {"anyOf": [STRING_MAP.schema, {"enum": [SYSFS]}]},
                  lambda v: v if v == SYSFS else STRING_MAP.convert(v),
                  'an object of GPU id -> NIC names (such as {"0": "mlx5_0"}), or "sysfs"')
MOONCAKE_JSON = Kind("object or path", {"anyOf": [{"type": "object"}, {"type": "string", "minLength": 1}]},
                     lambda v: v, "a mooncake.json object, or the path of one (relative to the config file)")
MOONCAKE_JSON_KEYS = ("local_hostname", "metadata_server", "protocol", "device_name", "master_server_address")
_PD_ENGINE = ("sglang 0.5.23 initialises its PD Mooncake engine with the hard-coded P2PHANDSHAKE "
              "(srt/distributed/device_communicators/mooncake_transfer_engine.py); MOONCAKE_MASTER and "
              "MOONCAKE_TE_META_DATA_SERVER belong to the Mooncake Store behind HiCache")


@dataclass(frozen=True)
class MooncakeSettings:
    protocol: str | None = key("protocol", None, choice("rdma", "tcp"), "the workers' MOONCAKE_PROTOCOL; tcp also "
                               "sets MC_FORCE_TCP=1", default_doc="mooncake_json's protocol, else SGLang's rdma")
    device_map: Mapping[str, str] | str = key("device_map", {}, DEVICE_MAP, "physical GPU id -> its NIC(s) "
                                              "(\"mlx5_0\" or \"mlx5_0,mlx5_1\"): each instance gets the entries of "
                                              "its own GPUs as --disaggregation-ib-device's per-GPU JSON map, its NICs "
                                              "checked on the node before start; \"sysfs\": each node's map is "
                                              "written from its PCIe topology at precheck time and passed as a file",
                                              default_doc="kv_transfer.ib_devices, shared by all GPUs")
    gid_index: int | None = key("gid_index", None, INT, "the workers' MC_GID_INDEX", minimum=0,
                                default_doc="nccl_ib_gid_index, else the nic_type's")
    env: Mapping[str, str] = key("env", {}, STRING_MAP, "more environment of every Mooncake worker (MC_*)")
    hugepages: int | None = count("hugepages", None, "HugePages_Total each worker node's /proc/meminfo must "
                                  "have at least (a precheck)", default_doc="not checked")
    mooncake_json: Any = key("mooncake_json", None, MOONCAKE_JSON, "a seed-style mooncake.json (inline or a path): "
                             "protocol and device_name are translated; metadata_server / master_server_address / "
                             "local_hostname are reported as not used by SGLang's PD path")


def read_mooncake_json(value: Any, config_dir: Path, path: str) -> tuple[dict, list[Problem]]:
    """The mooncake.json object given inline or as a path (relative to the config file's folder)."""
    if isinstance(value, Mapping):
        return dict(value), []
    file = Path(value) if Path(value).is_absolute() else config_dir / value
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        return {}, [Problem(path, f"{file}: cannot be read ({exc.strerror})")]
    except json.JSONDecodeError as exc:
        return {}, [Problem(path, f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})")]
    if not isinstance(data, dict):
        return {}, [Problem(path, f"{file}: expected a JSON object, got {type(data).__name__}")]
    return data, []


def translate_mooncake_json(data: Mapping, path: str) -> tuple[dict[str, Any], list[Problem], list[Problem]]:
    """(MooncakeSettings / kv_transfer values, problems, warnings) of a seed-style mooncake.json."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    protocol = data.get("protocol")
    if protocol is not None:
        if protocol in ("rdma", "tcp"):
            values["protocol"] = protocol
        else:
            problems.append(Problem(json_path(path, "protocol"), f"{json.dumps(protocol)} is not one of \"rdma\", "
                                                                 "\"tcp\""))
    if data.get("device_name"):
        values["ib_devices"] = tuple(d.strip() for d in str(data["device_name"]).split(",") if d.strip())
    for name in ("metadata_server", "master_server_address"):
        if data.get(name):
            warnings.append(Problem(json_path(path, name), f"{data[name]!r} is not used by SGLang's PD path: "
                                                           f"{_PD_ENGINE}"))
    if data.get("local_hostname"):
        warnings.append(Problem(json_path(path, "local_hostname"), f"{data['local_hostname']!r} is not used: SGLang "
                                "takes each node's address itself (SGLANG_HOST_IP / HOST_IP, else detected)"))
    for name in data:
        if name not in MOONCAKE_JSON_KEYS:
            warnings.append(Problem(json_path(path, name), "is not a key SGLang's PD path reads; ignored"))
    return values, problems, warnings


def device_map_problems(device_map: Mapping[str, str] | str, path: str) -> list[Problem]:
    """Keys must be GPU ids (what SGLang's parse_ib_device_config accepts), values NIC names."""
    out: list[Problem] = []
    if device_map == SYSFS:
        return out
    for gpu, nics in device_map.items():
        if not str(gpu).isdigit():
            out.append(Problem(json_path(path, gpu), f"key {gpu!r} is not a GPU id (0, 1, ...)"))
        elif not nics.strip():
            out.append(Problem(json_path(path, gpu), "names no NIC"))
    return out


# --------------------------------------------------------------------------------------- checks
def layout_problems(cfg: Any) -> list[Problem]:
    """Per model: each role's instance fits a node and its DP splits the TP group; a node listed twice in a role
    (several instances: instances_per_node); per node, the GPUs of all its instances fit gpus_per_node."""
    problems: list[Problem] = []
    for role in ROLES:
        nodes = getattr(cfg, f"{role}_nodes")
        first: dict[str, int] = {}
        for i, node in enumerate(nodes):
            if node in first and cfg.instance_layout == "per_node":
                problems.append(Problem(f"$.config.{role}_node_list[{i}]", (
                    f"node {node} is listed again (first at [{first[node]}]): list it once and set "
                    f"benchmark_params.<model>.{role}.instances_per_node for several instances on one node")))
            first.setdefault(node, i)
    for m in cfg.models:
        mpath = json_path("$.benchmark_params", m.id)
        if m.mode == AGGREGATED and cfg.instance_layout == "multi_node":
            problems.append(Problem(json_path(mpath, "mode"), "aggregated mode runs per_node instances; "
                                    "$.config.instance_layout is multi_node"))
        for role in m.roles:
            section, layout = getattr(m, role), m.layout(role)
            nnodes = len(role_nodes(cfg, role)) if cfg.instance_layout == "multi_node" else 1
            if layout.gpus > cfg.gpus_per_node:
                why = (f"{layout.tensor_parallelism} does not fit" if layout.gpus == layout.tensor_parallelism else
                       f"TP{layout.tensor_parallelism} x {layout.dp_size} DP replicas = {layout.gpus} GPUs per "
                       f"{role} instance do not fit")
                problems.append(Problem(key_path(mpath, role, section, "tensor_parallelism"),
                                        f"{why} gpus_per_node {cfg.gpus_per_node}"))
            tp = layout.tensor_parallelism * nnodes
            if layout.dp_attention and layout.dp_size < 2:
                problems.append(Problem(key_path(mpath, role, section, "dp_attention"),
                                        f"DP attention needs dp_size >= 2, dp_size is {layout.dp_size}"))
            elif layout.dp_attention and tp % layout.dp_size:
                problems.append(Problem(key_path(mpath, role, section, "dp_size"), (
                    f"{layout.dp_size} does not divide the {role} instance's TP size {tp}: SGLang requires tp_size "
                    "divisible by attn_dp_size")))
            if layout.instances_per_node > 1 and cfg.instance_layout == "multi_node":
                problems.append(Problem(json_path(json_path(mpath, role), "instances_per_node"),
                                        "multi_node layout: one instance spans the role's nodes"))
    problems += _gpu_budget(cfg)
    return list(dict.fromkeys(problems))  # both roles may find the same problem of the model's key


def _gpu_budget(cfg: Any) -> list[Problem]:
    """The GPUs of every instance of a model on a node, summed over both roles, within gpus_per_node: named at the
    node-list entry that overflows it, with every model that overflows it there."""
    over: dict[tuple[str, str], list[str]] = {}  # (path, node) -> what each model needs there
    for m in cfg.models:
        used: dict[str, list[str]] = {}
        total: dict[str, int] = {}
        for role in m.roles:
            layout = m.layout(role)
            per_node = layout.instances_per_node if cfg.instance_layout == "per_node" else 1
            nodes = role_nodes(cfg, role)
            for node in dict.fromkeys(nodes):  # a node listed twice in a role is a problem of its own
                used.setdefault(node, []).append(f"{role} {per_node} x {layout.gpus} GPUs")
                total[node] = total.get(node, 0) + per_node * layout.gpus
                if total[node] > cfg.gpus_per_node:
                    where = (_node_entry(cfg, role, node), node)
                    over.setdefault(where, []).append(f"{m.id} {total[node]} ({' + '.join(used[node])})")
    return [Problem(path, f"node {node}: the instances there need more GPUs than gpus_per_node "
                          f"{cfg.gpus_per_node}: {'; '.join(needs)}") for (path, node), needs in over.items()]


def _node_entry(cfg: Any, role: str, node: str) -> str:
    """The node-list entry naming a node of a role (aggregated: the first list that has it)."""
    for name in ((*ROLES,) if role == AGGREGATED else (role,)):
        nodes = getattr(cfg, f"{name}_nodes")
        if node in nodes:
            return f"$.config.{name}_node_list[{nodes.index(node)}]"
    raise ValueError(node)
