"""Property-based testing of the API against its own OpenAPI document, with schemathesis.

Every operation is called with examples generated from the document (valid and invalid
bodies, parameters and content types, the documented example image); no answer may be a
server error, and every answer must match the document: status code, content type, headers
and body schema, and invalid requests must be refused with a 4xx.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import create_app
from service.config import load_settings
from service.openapi import build_openapi
from service.registry import ModelRegistry
from tests.test_api import CNN, FAKE, MLP, SVM, api_models_dir

pytestmark = pytest.mark.slow  # a real server / a few hundred generated requests

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


SETTINGS = {"API_TOKEN": None, "MAX_IMAGES": 8}
MODELS = [CNN, FAKE, MLP, SVM]  # the folder's models, sorted as the registry lists them
# Built here rather than fetched from the app so that collection needs no trained models; the
# first test checks that the app serves exactly this document.
DOCUMENT = build_openapi(load_settings(SETTINGS), MODELS)
# 413 is how the API refuses too many images (or too large a body): a rejection as well.
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": [400, 401, 404, 405, 413, 415]}}})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    models = api_models_dir(tmp_path_factory)
    registry = ModelRegistry(models).load_all()
    registry.warm_up()
    return create_app({"MODELS_DIR": str(models), **SETTINGS}, registry=registry)


def test_the_app_serves_the_document_tested(api_app):
    served = api_app.test_client().get("/openapi.json").get_json()
    if list(api_app.extensions["cvpipe"]["registry"].models) != MODELS:
        pytest.skip("no CNN test model here: the served document lists fewer models")
    assert served == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, api_app):
    response = case.call(app=api_app)
    assert response.status_code < 500, response.text[:500]
    case.validate_response(response, checks=CHECKS, transport_kwargs={"app": api_app})
