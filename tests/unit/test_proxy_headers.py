from llmux.web.upstream import filter_headers


def test_hop_by_hop_and_connection_listed_headers_are_dropped():
    headers = [
        ("Content-Type", "text/event-stream"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "x"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("Content-Length", "10"),
        ("Set-Cookie", "sid=1"),
        ("Content-Encoding", "gzip"),
    ]
    kept = filter_headers(headers, drop=frozenset({"content-length"}))
    assert kept == [
        ("Content-Type", "text/event-stream"),
        ("Set-Cookie", "sid=1"),
        ("Content-Encoding", "gzip"),
    ]


def test_header_names_match_without_case():
    kept = filter_headers([("CONNECTION", "X-A"), ("x-a", "1"), ("X-B", "2")])
    assert kept == [("X-B", "2")]
