"""The OpenAPI 3.0 document of the API, served at /openapi.json.

Written by hand, except each module's request body: its properties are read
from that module's command-line flags (the body takes the same flags), so a
new module's flags appear without an edit here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ecapture import __version__

from .config_request import CONTROL_KEYS, REFUSED_KEYS

Json = dict[str, Any]

ERROR = {"$ref": "#/components/schemas/Error"}
STATUS = {"$ref": "#/components/schemas/Status"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _flag_schema(action: argparse.Action) -> Json | None:
    if isinstance(action, argparse._StoreTrueAction):
        schema: Json = {"type": "boolean"}
    elif isinstance(action, argparse._StoreAction):
        kind = action.type
        schema = {"type": "integer" if kind is int else "number" if kind is float else "string"}
        if action.choices is not None:
            schema["enum"] = list(action.choices)
        if kind is not int and kind is not float:
            schema["minLength"] = 1
    else:
        return None
    if action.help and action.help != argparse.SUPPRESS:
        schema["description"] = " ".join(action.help.split())
    return schema


def flag_properties(parser: argparse.ArgumentParser) -> Json:
    """The body's properties for one module: each long flag, typed."""
    properties: Json = {}
    for action in parser._actions:
        longs = [option[2:] for option in action.option_strings if option.startswith("--")]
        if not longs or longs[0] in REFUSED_KEYS or longs[0] in CONTROL_KEYS:
            continue
        schema = _flag_schema(action)
        if schema is not None:
            properties[longs[0]] = schema
    return properties


def _reload_responses() -> Json:
    return {
        "200": _json(STATUS, "the new configuration runs; its status"),
        "400": _json(ERROR, "malformed JSON or an invalid value; the capture is untouched"),
        "401": _json(ERROR, "missing or wrong bearer token"),
        "409": _json(ERROR, "the body is for another module and does not ask to switch"),
        "422": _json(ERROR, "the new configuration did not start; the previous one runs again"),
        "500": _json(ERROR, "neither the new nor the previous configuration started: "
                            "the capture ends"),
        "503": _json(ERROR, "the capture is stopping"),
    }


def _config_body(modules: Mapping[str, argparse.ArgumentParser], with_module: bool) -> Json:
    schemas = []
    for name, parser in sorted(modules.items()):
        properties = flag_properties(parser)
        properties["switch"] = {"type": "boolean",
                                "description": "allow a module other than the running one"}
        if with_module:
            properties["module"] = {"type": "string", "enum": [name]}
        schema: Json = {"type": "object", "properties": properties}
        if with_module:
            schema["required"] = ["module"]
        schemas.append(schema)
    return {"oneOf": schemas} if with_module else schemas[0]


def openapi_document(modules: Mapping[str, argparse.ArgumentParser]) -> Json:
    """`modules`: subcommand name (aliases included) → its argparse parser."""
    paths: Json = {
        "/status": {"get": {
            "summary": "the running capture",
            "operationId": "getStatus",
            "responses": {"200": _json(STATUS, "status"),
                          "401": _json(ERROR, "missing or wrong bearer token")},
        }},
        "/openapi.json": {"get": {
            "summary": "this document",
            "operationId": "getOpenapi",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document"),
                          "401": _json(ERROR, "missing or wrong bearer token")},
        }},
        "/config": {"post": {
            "summary": "replace the running configuration (answered once it runs)",
            "description": "Validated first; then the running module is stopped, drained "
            "and closed, the new one built from this configuration alone and started. "
            "The event stream and HAR file go on as one file. Capture-wide fields "
            "(eventaddr, format, har, tsize, hex, color, logaddr, debug, nice) keep "
            "their running values; giving another value is refused.",
            "operationId": "postConfig",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _config_body(modules, with_module=True)}}},
            "responses": _reload_responses(),
        }},
        "/events": {"get": {
            "summary": "WebSocket of the JSON events (the objects of --format json)",
            "description": "Each message is one event. A client that reads too slowly "
            "misses events; it is then sent a `lost` event with reason queue_full and "
            "the number of events and bytes it missed.",
            "operationId": "getEvents",
            "parameters": [
                {"name": "module", "in": "query", "schema": {"type": "string"},
                 "description": "only events of this module"},
                {"name": "pid", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "only events of this process"},
                {"name": "type", "in": "query", "schema": {"type": "string"},
                 "description": "only these event types, comma-separated (http,data,lost...)"},
            ],
            "responses": {
                "101": {"description": "switching to the WebSocket protocol"},
                "400": _json(ERROR, "not a WebSocket request, or a bad filter"),
                "401": _json(ERROR, "missing or wrong bearer token"),
            },
        }},
        "/": {"get": {
            "summary": "the live page (HTML)",
            "operationId": "getPage",
            "responses": {"200": {"description": "the page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}},
                          "401": _json(ERROR, "missing or wrong bearer token")},
        }},
    }
    for name, parser in sorted(modules.items()):
        paths[f"/{name}"] = {"post": {
            "summary": f"replace the running configuration with one of `ecapture {name}`",
            "description": "The same as POST /config with \"module\": "
            f"\"{name}\" (eCapture's per-module paths).",
            "operationId": f"post_{name}",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _config_body({name: parser}, with_module=False)}}},
            "responses": _reload_responses(),
        }}
    counts = {"type": "object", "required": ["records", "bytes"],
              "properties": {"records": {"type": "integer"}, "bytes": {"type": "integer"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ecapture runtime control", "version": __version__,
                 "description": "Runs with `ecapture --listen HOST:PORT`. With --api-token "
                 "(or ECAPTURE_API_TOKEN) every request needs `Authorization: Bearer TOKEN`."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "restored": {"type": "boolean",
                                 "description": "the previous configuration runs again"},
                    "status": {"nullable": True, "allOf": [STATUS]},
                }},
                "Status": {"type": "object", "required": [
                    "module", "state", "config", "libraries", "probes_attached", "counters",
                    "uptime_s"], "properties": {
                    "module": {"type": "string"},
                    "state": {"type": "string", "enum": [
                        "starting", "running", "reloading", "stopping", "stopped", "failed"]},
                    "config": {"type": "object"},
                    "libraries": {"type": "array", "items": {
                        "type": "object", "required": ["path"], "properties": {
                            "path": {"type": "string"},
                            "version": {"type": "string", "nullable": True}}}},
                    "probes_attached": {"type": "integer"},
                    "probes": {"type": "array", "items": {"type": "string"}},
                    "counters": {"type": "object", "required": [
                        "records", "bytes", "exchanges", "losses"], "properties": {
                        "records": {"type": "integer"},
                        "bytes": {"type": "integer", "description": "payload bytes"},
                        "exchanges": {"type": "integer"},
                        "connections_closed": {"type": "integer"},
                        "items": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "losses": {"type": "object", "additionalProperties": counts},
                    }},
                    "uptime_s": {"type": "number"},
                    "reloads": {"type": "integer"},
                    "last_reload": {"type": "object", "nullable": True, "properties": {
                        "module": {"type": "string"}, "succeeded": {"type": "boolean"},
                        "error": {"type": "string", "nullable": True},
                        "gap_s": {"type": "number",
                                  "description": "seconds without capture during the reload"},
                    }},
                    "event_clients": {"type": "integer"},
                }},
            },
        },
        "security": [{"bearer": []}],
    }
