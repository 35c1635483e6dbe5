"""The gateway's parts that need no child: names, the resource URI scheme, filters, the merged
index and its collision policy, the latency figures, and the log-level gate of the relay."""

from __future__ import annotations

import mcp_types as types
import pytest

from metasup_mcp.config import ServerConfig, ToolFilter
from metasup_mcp.gateway.catalog import ClaimBook, Offer, build_index
from metasup_mcp.gateway.naming import (
    address_uri,
    allowed,
    client_safe_name,
    exposed_name,
    name_problem,
    resolve_uri,
    resource_key,
    split_name,
)
from metasup_mcp.gateway.stats import LATENCY_BUCKETS, CallStats
from metasup_mcp.gateway.upstream import Upstream

TRICKY_URIS = [
    "notes://all",
    "notes://{id}",
    "file:///home/me/a b/ü.txt",
    "https://example.com/a?b=c&d=%2F#frag",
    "demo://resource/dynamic/text/{resourceId}",
    "x:",
    "",
    "metasup://ns/other/nested://uri",
    "urn:isbn:0451450523",
    "weird://host/{+path}{?q,lang}",
    "a/b/c",
]


def server(name: str, namespace: str | None = None, **fields: object) -> ServerConfig:
    return ServerConfig(name=name, command="python", namespace=namespace, **fields)


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, description=f"the {name} tool", input_schema={"type": "object"})


@pytest.mark.parametrize("uri", TRICKY_URIS)
def test_any_uri_round_trips_through_its_re_addressed_form(uri: str) -> None:
    exposed = address_uri("notes", uri)
    assert exposed.startswith("metasup://ns/notes/")
    assert resolve_uri(exposed) == ("notes", uri)


def test_uris_the_gateway_did_not_make_are_not_resolved() -> None:
    for foreign in ["notes://all", "metasup://status", "metasup://ns/", "metasup://ns/notes", "metasup://ns//x"]:
        assert resolve_uri(foreign) is None, foreign


def test_a_template_stays_a_template_and_expands_to_a_resolvable_uri() -> None:
    template = address_uri("notes", "notes://{id}")
    assert template == "metasup://ns/notes/notes://{id}"
    assert resolve_uri(template.replace("{id}", "a%2Fb")) == ("notes", "notes://a%2Fb")


def test_names_split_on_the_first_separator_and_bare_names_have_no_namespace() -> None:
    assert exposed_name("fx", "add") == "fx__add" and exposed_name("", "add") == "add"
    assert split_name("fx__do__it") == ("fx", "do__it")
    assert split_name("plain") == ("", "plain")


def test_names_clients_reject_are_made_safe_and_cut_names_stay_apart() -> None:
    assert client_safe_name("fx", "files.read") == "fx__files_read"
    assert client_safe_name("fx", "ünï code/x") == "fx__uni_code_x"
    assert client_safe_name("", "ok-name") == "ok-name"
    cut_a, cut_b = client_safe_name("fx", "a" * 80, 60), client_safe_name("fx", "a" * 81, 60)
    assert cut_a and cut_b and len(cut_a) == len(cut_b) == 60 and cut_a != cut_b
    assert cut_a == client_safe_name("fx", "a" * 80, 60)  # stable across listings
    assert client_safe_name("n" * 58, "tools", 64) is None  # the namespace leaves no room


def test_name_problems_name_the_tool_the_server_and_a_way_out() -> None:
    assert name_problem("s", "tool", "ok", "s__ok") is None
    long = name_problem("s", "tool", "t" * 70, "s__" + "t" * 70)
    assert long and "'s'" in long and "73 characters" in long and "`namespace`" in long and "`tools.deny`" in long
    dotted = name_problem("s", "tool", "a.b", "s__a.b")
    assert dotted and "outside A-Z a-z 0-9 _ -" in dotted and "`tools.deny`" in dotted


def test_resource_keys_use_the_namespace_or_the_name_made_safe() -> None:
    assert resource_key(server("notes")) == "notes"
    assert resource_key(server("my notes", namespace="n")) == "n"
    assert resource_key(server("my notes/2", namespace="")) == "my_notes_2"


def test_filters_take_names_and_globs_and_deny_wins() -> None:
    rules = ToolFilter(allow=["get_*", "echo"], deny=["get_secret*"])
    assert [n for n in ["echo", "get_time", "get_secret_key", "add"] if allowed(rules, n)] == ["echo", "get_time"]
    assert allowed(ToolFilter(), "anything") and not allowed(ToolFilter(deny=["*"]), "anything")


def test_the_index_namespaces_tools_prompts_and_resources_and_routes_back() -> None:
    servers = [server("notes"), server("bare", namespace="")]
    offers = {
        "notes": Offer(
            tools=(tool("add_note"),),
            resources=(types.Resource(name="all", uri="notes://all"),),
            templates=(types.ResourceTemplate(name="one", uri_template="notes://{id}"),),
            prompts=(types.Prompt(name="summarize"),),
        ),
        "bare": Offer(tools=(tool("echo"),)),
    }
    index = build_index(servers, offers, ["server_status"], [], ClaimBook())
    assert [t.name for t in index.tool_list] == ["notes__add_note", "echo"]
    assert index.tool_list[0].description == "the add_note tool"
    assert index.tools["notes__add_note"].server == "notes" and index.tools["notes__add_note"].name == "add_note"
    assert index.resource_list[0].uri == "metasup://ns/notes/notes://all"
    assert index.template_list[0].uri_template == "metasup://ns/notes/notes://{id}"
    assert [p.name for p in index.prompt_list] == ["notes__summarize"]
    assert index.exposed_tools == {"notes": 1, "bare": 1}
    assert index.changed(build_index(servers, {**offers, "bare": Offer()}, [], [], ClaimBook())) == {"tools"}


def test_a_collision_keeps_the_first_owner_across_rebuilds_until_it_drops_the_name() -> None:
    servers = [server("a", namespace=""), server("b", namespace="")]
    claims = ClaimBook()
    only_b = build_index(servers, {"a": Offer(), "b": Offer(tools=(tool("echo"),))}, [], [], claims)
    assert only_b.tools["echo"].server == "b"
    both = build_index(servers, {"a": Offer(tools=(tool("echo"),)), "b": Offer(tools=(tool("echo"),))}, [], [], claims)
    assert both.tools["echo"].server == "b"  # b offered it first, though a comes first in the config
    assert "'b' already offers" in both.problems["a"][0] and not both.problems["b"]
    only_a = build_index(servers, {"a": Offer(tools=(tool("echo"),)), "b": Offer()}, [], [], claims)
    assert only_a.tools["echo"].server == "a" and not only_a.problems["a"]


def test_reserved_and_overlong_names_are_refused_and_reported() -> None:
    servers = [server("bare", namespace=""), server("n" * 58)]
    offers = {"bare": Offer(tools=(tool("server_status"), tool("ok"))), "n" * 58: Offer(tools=(tool("long_name"),))}
    index = build_index(servers, offers, ["server_status"], [], ClaimBook())
    assert set(index.tools) == {"ok"}
    assert "supervisor itself" in index.problems["bare"][0]
    assert "over the 64" in index.problems["n" * 58][0]


def test_latency_figures_percentiles_and_a_cumulative_histogram() -> None:
    stats = CallStats()
    for ms in range(1, 101):
        stats.calls += 1
        stats.record(ms / 1000, error=ms % 10 == 0)
    summary = stats.summary()
    assert summary["calls"] == 100 and summary["errors"] == 10
    assert summary["latency"] == {"count": 100, "mean_ms": 50.5, "p50_ms": 50.0, "p99_ms": 99.0}
    histogram = stats.histogram()
    assert histogram.bounds == LATENCY_BUCKETS and histogram.count == 100 and histogram.counts[-1] == 100
    assert histogram.counts[LATENCY_BUCKETS.index(0.01)] == 10  # 1..10 ms
    assert list(histogram.counts) == sorted(histogram.counts)
    assert len(stats.recent_latencies()) == 100


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_child_log_messages_below_the_clients_level_are_dropped_and_carry_the_server_name() -> None:
    sent: list[tuple[str, str | None]] = []

    class Connection:  # the part of mcp.server.connection.Connection the relay uses
        protocol_version = "2025-11-25"

        async def log(self, level: str, data: object, logger: str | None = None) -> None:
            sent.append((level, logger))

    class Session:
        _connection = Connection()

    upstream, session = Upstream(), Session()
    upstream.attach(session)  # type: ignore[arg-type]
    upstream.set_level("warning")
    for level in ("debug", "warning", "error"):
        await upstream.log("notes", types.LoggingMessageNotificationParams(level=level, data="x", logger="db"), None)
    assert sent == [("warning", "notes/db"), ("error", "notes/db")]
