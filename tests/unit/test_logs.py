import io
import json
import logging

from domain.token_values import generate_token
from infrastructure.logs import JsonFormatter, mask_secrets


def test_token_values_are_masked_in_any_text():
    value = generate_token()
    assert value not in mask_secrets(f"clone with {value} please")
    assert "gldt-[REDACTED]" in mask_secrets(f"clone with {value} please")


def test_log_lines_are_json_objects_without_secrets():
    value = generate_token("glpat-")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bad token %s", value, extra={"token_id": 7})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    entry = json.loads(line)
    assert entry["token_id"] == 7
    assert entry["level"] == "warning"
    assert value not in line
