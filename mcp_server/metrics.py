"""Prometheus collectors of the MCP server (default registry, served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "mcp_server_http_requests_total", "HTTP requests by route and status", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "mcp_server_http_request_seconds", "HTTP request latency by route", ["route"]
)
GENERATIONS = Counter(
    "mcp_server_generations_total",
    "Generations by entry point (tool or REST route) and outcome",
    ["entry", "outcome"],
)
GENERATION_SECONDS = Histogram(
    "mcp_server_generation_seconds",
    "Generation latency (queue wait included) by entry point",
    ["entry"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
IN_FLIGHT = Gauge("mcp_server_generations_in_flight", "Generations in progress", ["entry"])
QUEUE_DEPTH = Gauge("mcp_server_queue_depth", "Requests waiting for a generation slot", ["model"])
RUNTIME_RETRIES = Counter(
    "mcp_server_runtime_retries_total",
    "Generations sent again because their runtime replica failed before starting them",
    ["model", "kind"],
)
RUNTIME_REPLICAS = Gauge(
    "mcp_server_runtime_replicas", "Ready runtime replicas admission counts with", ["model"]
)
CLIENT_REJECTIONS = Counter(
    "mcp_server_client_limit_rejections_total",
    "Generations refused because their client already held MAX_CONCURRENT_PER_CLIENT",
)
RUNTIME_ERRORS = Counter(
    "mcp_server_runtime_errors_total", "Failed runtime calls by model and kind", ["model", "kind"]
)
TOOL_CALLS = Counter(
    "mcp_server_tool_calls_total", "MCP tool calls by tool and outcome", ["tool", "outcome"]
)
