"""Field-by-field checking of a custom resource against the kserve package's typed models.

The models are generated from KServe's OpenAPI spec: `attribute_map` names every JSON field a
type has and `openapi_types` its type, down to the Kubernetes core types (kubernetes.client).
A field the models do not know is a field KServe would drop or reject.
"""

from __future__ import annotations

import re

import kserve.models
import kubernetes.client.models

_LIST = re.compile(r"^list\[(.+)\]$")
# kserve writes dict(str, str), the kubernetes client dict[str, str].
_DICT = re.compile(r"^dict[(\[]([^,]+), (.+)[)\]]$")
_SCALARS = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    # Quantities and IntOrString arrive as YAML strings or numbers.
    "ResourceQuantity": (str, int, float),
    "V1beta1MetricQuantity": (str, int, float),
    "datetime": (str,),
    "date": (str,),
}


# kserve names the Kubernetes types it embeds by their Go package, the kubernetes client by
# version: K8sIoApiAppsV1DeploymentStrategy is V1DeploymentStrategy.
_GO_PACKAGE = re.compile(r"^K8sIoApi[A-Z][a-z]+(V\d.*)$")


def _model(name: str) -> type:
    if match := _GO_PACKAGE.match(name):
        name = match[1]
    for module in (kserve.models, kubernetes.client.models):
        found = getattr(module, name, None)
        if found is not None:
            return found
    raise LookupError(f"no typed model named {name}")


def problems(value: object, type_name: str, path: str = "") -> list[str]:
    """Every unknown field and wrongly typed value in VALUE, read as TYPE_NAME."""
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name}), got {value!r}"]
        return [p for i, item in enumerate(value) for p in problems(item, match[1], f"{path}[{i}]")]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map ({type_name}), got {value!r}"]
        return [p for k, v in value.items() for p in problems(v, match[2], f"{path}.{k}")]
    if type_name == "object":
        return []
    if type_name in _SCALARS:
        allowed = _SCALARS[type_name]
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        return [f"{path}: expected {type_name}, got {value!r}"] if wrong else []
    model = _model(type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name}), got {value!r}"]
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in by_json_name:
            found.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            found += problems(item, model.openapi_types[by_json_name[key]], f"{path}.{key}")
    return found
