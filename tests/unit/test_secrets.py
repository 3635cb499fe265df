import logging

from binderbuild.secrets import Scrubber, ScrubbingFilter


def test_scrubs_configured_values_and_url_credentials():
    scrubber = Scrubber(["s3cr3t-password", "abc"])  # too short to be a secret
    text = "push with s3cr3t-password to https://user:pw@reg.example.org/v2 abc"
    out = scrubber.scrub(text)
    assert "s3cr3t-password" not in out
    assert "user:pw" not in out and "https://***@reg.example.org/v2" in out
    assert out.endswith("abc")
    assert scrubber.scrub("Authorization: Bearer tok123456") == "Authorization: Bearer ***"


def test_logging_filter_scrubs_formatted_messages(caplog):
    logger = logging.getLogger("binderbuild.test-secrets")
    logger.addFilter(ScrubbingFilter(Scrubber(["hub-token-value"])))
    with caplog.at_level(logging.INFO, logger="binderbuild.test-secrets"):
        logger.info("token is %s", "hub-token-value")
    assert "hub-token-value" not in caplog.text
    assert "token is ***" in caplog.text
