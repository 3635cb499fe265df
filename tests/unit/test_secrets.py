from binderbuild.secrets import Scrubber


def test_scrubs_configured_values_and_url_credentials():
    scrubber = Scrubber(["s3cr3t-password", "abc"])  # too short to be a secret
    text = "push with s3cr3t-password to https://user:pw@reg.example.org/v2 abc"
    out = scrubber.scrub(text)
    assert "s3cr3t-password" not in out
    assert "user:pw" not in out and "https://***@reg.example.org/v2" in out
    assert out.endswith("abc")
    assert scrubber.scrub("Authorization: Bearer tok123456") == "Authorization: Bearer ***"
