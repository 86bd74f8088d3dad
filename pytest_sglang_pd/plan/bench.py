"""The commands of SGLang's benchmark tools (bench_serving, few_shot_gsm8k), one per test and concurrency."""

from __future__ import annotations

from .. import releases
from ..config import ClusterConfig, InferenceTest, ModelConfig
from ..textgen.tokenizer import tokenizer_dir
from .deployment import Deployment, ProcessSpec


def bench_output_path(dep: Deployment, test: InferenceTest, concurrency: int) -> str:
    return f"{dep.log_dir}/bench/{dep.model.id}-{test.name}-c{concurrency}.jsonl"


def gsm8k_data_path(dep: Deployment, test: InferenceTest) -> str | None:
    """few_shot_gsm8k's --data-path: the test's, else (simulated) the simulator's questions the suite writes there."""
    if test.data_path or dep.engine != "sim":
        return test.data_path
    return f"{dep.log_dir}/bench/{dep.model.id}-{test.name}-questions.jsonl"


def bench_tokenizer(cfg: ClusterConfig, model: ModelConfig) -> str:
    """bench_serving's --tokenizer: the model's, else the simulated model's (plain processes share this package),
    else the model path the workers load."""
    if model.tokenizer:
        return model.tokenizer
    if cfg.simulated and cfg.runtime == "process":
        return str(tokenizer_dir())
    return model.model


def bench_serving_argv(dep: Deployment, test: InferenceTest, concurrency: int, tokenizer: str) -> tuple[str, ...]:
    """bench_serving (the planned release's module) against the router (a decode-alone test: the first decode
    worker, --fake-prefill); its JSON line goes to bench_output_path(). A test without its own max_concurrency runs
    without --max-concurrency: every prompt at once."""
    router = dep.servers("decode")[0] if test.decode_alone else dep.router
    dataset = test.dataset
    if dataset == "random" and not test.dataset_path:
        dataset = "random-ids"  # random needs the ShareGPT download; random-ids runs offline
    argv = [dep.bench_python, "-m", releases.bench_serving_module(dep.sglang_version), "--backend", test.backend,
            "--host", router.host, "--port", str(router.port), "--model", dep.model.model, "--tokenizer", tokenizer,
            "--dataset-name", dataset, "--num-prompts", str(test.num_prompts)]
    if not test.unbounded:
        argv += ["--max-concurrency", str(concurrency)]
    argv += ["--request-rate", str(test.request_rate),
             "--seed", str(test.seed), "--warmup-requests", str(test.warmup_requests),
             "--output-file", bench_output_path(dep, test, concurrency), "--output-details"]
    if dataset == "generated-shared-prefix":
        argv += ["--gsp-num-groups", str(test.gsp_num_groups),
                 "--gsp-prompts-per-group", str(test.gsp_prompts_per_group),
                 "--gsp-system-prompt-len", str(test.gsp_system_prompt_len),
                 "--gsp-question-len", str(test.gsp_question_len),
                 "--gsp-output-len", str(test.gsp_output_len)]
    else:
        argv += ["--random-input-len", str(test.input_length), "--random-output-len", str(test.output_length),
                 "--random-range-ratio", str(test.random_range_ratio)]
    if test.dataset_path:
        argv += ["--dataset-path", test.dataset_path]
    if test.decode_alone:
        argv += releases.fake_prefill_args(dep.sglang_version)
    return tuple(argv)


def gsm8k_argv(dep: Deployment, test: InferenceTest, concurrency: int) -> tuple[str, ...]:
    """`sglang.test.few_shot_gsm8k` against the router (it prints Accuracy / Invalid / Latency / Output throughput),
    with the --host form of the planned release."""
    router = dep.router
    argv = [dep.bench_python, "-m", "sglang.test.few_shot_gsm8k", "--num-questions", str(test.num_questions),
            "--num-shots", str(test.num_shots), "--parallel", str(concurrency),
            "--host", releases.gsm8k_host(dep.sglang_version, router.host), "--port", str(router.port)]
    data_path = gsm8k_data_path(dep, test)
    if data_path:
        argv += ["--data-path", data_path]
    return tuple(argv)


def bench_processes(dep: Deployment, tokenizer: str) -> tuple[ProcessSpec, ...]:
    """The benchmark commands the sglang bench client runs on the benchmark node, one per test and concurrency.
    HF_HUB_OFFLINE=1 only where the tokenizer is a local directory (a hub id may need a download)."""
    out = []
    bench = next((c for c in dep.containers if c.key == "bench"), None)
    node = bench.node if bench else dep.entry.node
    env = {"HF_HUB_OFFLINE": "1"} if tokenizer.startswith("/") else {}
    for test in dep.model.tests:
        if test.bench_client != "sglang":
            continue
        for conc in test.max_concurrency:
            argv = gsm8k_argv(dep, test, conc) if test.kind == "gsm8k" else bench_serving_argv(dep, test, conc, tokenizer)
            key = f"bench_{test.name}_c{conc}"
            out.append(ProcessSpec(key=key, role="bench", node=node, argv=argv,
                                   env=env, port=None, log_path=f"{dep.log_dir}/bench/{key}.log",  # the wrapper creates bench/ for --output-file
                                   container=bench.key if bench else None, host=node))
    return tuple(out)
