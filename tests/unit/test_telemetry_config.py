"""Which OTLP exports the standard OTEL_* variables (and HEADWATER_OTLP_ENDPOINT) ask for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwater.errors import ConfigError
from headwater.producers.telemetry import Export, Plan, plan, with_scheme


def test_nothing_set_means_nothing_exported() -> None:
    assert plan({}) == Plan(None, None)


def test_the_standard_endpoint_for_both_signals() -> None:
    got = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert got == Plan(Export("http://collector:4317", "grpc"),
                       Export("http://collector:4317", "grpc"))


def test_a_loopback_endpoint_without_scheme_is_plaintext() -> None:
    for endpoint in ("localhost:4317", "127.0.0.1:4317", "[::1]:4317"):
        assert plan({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}).traces == \
            Export(f"http://{endpoint}", "grpc")


def test_a_remote_endpoint_without_scheme_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_ENDPOINT='collector:4317' has "
                       r"no scheme: write http://collector:4317 \(plaintext\) or https://"):
        plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})
    with pytest.raises(ConfigError, match="HEADWATER_OTLP_ENDPOINT='otel:4317' has no scheme"):
        plan({}, "otel:4317")
    # the standard way to say plaintext without a scheme is honoured
    assert with_scheme("collector:4317", "X", insecure=True) == "http://collector:4317"
    assert plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                 "OTEL_EXPORTER_OTLP_INSECURE": "true"}).traces == \
        Export("http://collector:4317", "grpc")
    with pytest.raises(ConfigError, match="scheme must be http:// or https://"):
        plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"})


def test_http_protobuf_appends_the_signal_paths_to_the_base_endpoint() -> None:
    got = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318/",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert got == Plan(Export("https://otel.example:4318/v1/traces", "http/protobuf"),
                       Export("https://otel.example:4318/v1/metrics", "http/protobuf"))
    with pytest.raises(ConfigError, match="'http/json' is not supported"):
        plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_PROTOCOL":
              "http/json"})


def test_per_signal_variables_and_exporters() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
           "OTEL_METRICS_EXPORTER": "none"}
    assert plan(env) == Plan(Export("http://traces:4317", "grpc"), None)
    assert plan({**env, "OTEL_SDK_DISABLED": "true"}) == Plan(None, None)
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        plan({**env, "OTEL_TRACES_EXPORTER": "zipkin"})


def test_headwater_endpoint_wins_over_the_generic_one() -> None:
    got = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317"}, "http://mine:4317")
    assert got.traces == Export("http://mine:4317", "grpc")


def test_a_publisher_keeps_the_applications_own_tracer_provider() -> None:
    """With OTEL_* set, a Publisher configures telemetry itself, unless the application
    installed a provider of its own: then that one gets the spans."""
    script = r'''
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
mine, spans = TracerProvider(), InMemorySpanExporter()
mine.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(mine)
from headwater.producers import Publisher, telemetry
class Nowhere:
    def send(self, key, event_id, value): pass
    def flush(self, timeout=None): pass
    def close(self): pass
Publisher(Nowhere(), run_id="r").flush()
assert trace.get_tracer_provider() is mine and not telemetry.configure_from_env()
print(sorted(s.name for s in spans.get_finished_spans()))
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                           "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['headwater.publish.flush']"


def test_background_publisher_sends_under_the_submitters_span() -> None:
    """The worker thread publishes each payload inside the span that was current when it
    was submitted (a training step), so the transport sees that span."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from headwater.producers import Publisher
    from headwater.producers.publisher import BackgroundPublisher
    from headwater.v1 import events_pb2

    seen: list[int] = []

    class Recording:
        def send(self, key: str, event_id: str, value: bytes) -> None:
            seen.append(trace.get_current_span().get_span_context().span_id)

        def flush(self, timeout: float | None = None) -> None:
            pass

        def close(self) -> None:
            pass

    steps = TracerProvider().get_tracer("trainer")  # not installed globally
    source = events_pb2.SourceRegistered(source_id="s", uri="file:///s")
    with BackgroundPublisher(Publisher(Recording(), run_id="r")) as background:
        with steps.start_as_current_span("step 1") as one:
            background(source)
        with steps.start_as_current_span("step 2") as two:
            background(source)
        background(source)  # outside any span
    assert seen == [one.get_span_context().span_id, two.get_span_context().span_id, 0]
