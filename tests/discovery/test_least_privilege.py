"""The discovery Role grants exactly what the server asks the API server for: the requests
discovery really sends (to the fake API server, over a few polls, with a model to count
replicas of) are each granted by the rendered Role, and each grant is used. The static
counterpart, from the code's calls, is in tests/deploy/test_discovery_rbac.py."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import one, render, runtime_dir
from tests.discovery.test_discovery import INTERVAL, eventually, serving

# kmock's name for each request, and the RBAC verb the API server checks for it.
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create",
         "UPDATE": "patch", "DELETE": "delete"}  # fmt: skip


def granted(model: str) -> set[tuple[str, str, str]]:
    role = one(render(runtime_dir(model)), "Role", "diffusers-mcp-discovery")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("model", ["tiny-sd", "redhat-dog"])
async def test_the_role_grants_exactly_the_requests_discovery_sends(cluster, tmp_path, model):
    cluster.put("painter", url="http://painter-predictor.default.svc.cluster.local")
    cluster.put_endpoints("painter", ready=[True, True])
    async with serving(cluster, tmp_path) as service:
        await eventually(lambda: service.discovery_status()["namespaces"]["default"]["synced_at"])
        polls = len(cluster.list_requests())
        await eventually(lambda: len(cluster.list_requests()) >= polls + 2, timeout=20 * INTERVAL)
    sent = {(r.resource.group, r.resource.plural, VERBS[r.action.value]) for r in cluster.api}
    assert sent == granted(model)
