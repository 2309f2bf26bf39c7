//! Just enough HTTP/1.x for Scope's polls and Prometheus scrapes, as pure
//! functions: parse a request head from a buffer, route it, frame the
//! answer. Bounded: request lines over `MAX_REQUEST_LINE` bytes, heads over
//! `MAX_HEAD` and bodies over `MAX_BODY` are refused, never buffered.

/// Longest request line plus headers accepted (431 beyond).
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request line accepted (414 beyond, as RFC 9112 says for an
/// over-long request-target): half of `MAX_HEAD`, so that a line that is
/// accepted leaves room for headers, and a head too long is 431 only because
/// of its header fields.
pub const MAX_REQUEST_LINE: usize = MAX_HEAD / 2;
/// Longest request body accepted, and skipped (413 beyond): nothing here
/// takes a body.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// Bytes of head plus body this request occupies in the buffer.
    pub length: usize,
}

/// What the bytes at the start of a connection's buffer amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole request yet.
    Incomplete,
    Request(RequestHead),
    /// Refused with this status; the connection is closed after the answer.
    Error(u16),
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Longest method token accepted.
const MAX_METHOD: usize = 16;

/// Whether `prefix`, the start of a request line not yet whole, can still
/// become one: `METHOD SP /...`. Lets garbage be refused at once, not after
/// `MAX_HEAD` bytes.
fn plausible_start(prefix: &[u8]) -> bool {
    let method_len = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match prefix.get(method_len) {
        None => method_len <= MAX_METHOD,
        Some(b' ') => {
            (1..=MAX_METHOD).contains(&method_len)
                && prefix.get(method_len + 1).is_none_or(|&b| b == b'/')
        }
        Some(_) => false,
    }
}

/// Method, target and whether it is HTTP/1.0, or the status to refuse with.
fn request_line(line: &str) -> Result<(&str, &str, bool), u16> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ if version.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    };
    if !plausible_start(line.as_bytes()) || !target.starts_with('/') {
        return Err(400);
    }
    Ok((method, target, http10))
}

/// Parses the request at the start of `buf` (pipelined requests follow it).
pub fn parse_request(buf: &[u8]) -> Parse {
    // Refuse what cannot become a request, or is too long a request line, as
    // soon as it shows.
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    let line = &buf[..line_end.unwrap_or(buf.len())];
    if !plausible_start(line) {
        return Parse::Error(400);
    }
    if line.len() > MAX_REQUEST_LINE {
        return Parse::Error(414);
    }
    let Some(head_len) = find_head_end(buf) else {
        return match line_end {
            Some(_) => match std::str::from_utf8(line)
                .map_err(|_| 400)
                .and_then(request_line)
            {
                Err(status) => Parse::Error(status),
                Ok(_) if buf.len() > MAX_HEAD => Parse::Error(431),
                Ok(_) => Parse::Incomplete,
            },
            // Not past MAX_REQUEST_LINE, so not past MAX_HEAD either.
            None => Parse::Incomplete,
        };
    };
    if head_len > MAX_HEAD {
        return Parse::Error(431);
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_len - 4]) else {
        return Parse::Error(400);
    };
    let mut lines = head.split("\r\n");
    let (method, target, http10) = match request_line(lines.next().unwrap_or_default()) {
        Ok(parsed) => parsed,
        Err(status) => return Parse::Error(status),
    };
    let mut keep_alive = !http10;
    let mut body = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parse::Error(400);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body = match value.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => n,
                Ok(_) => return Parse::Error(413),
                Err(_) => return Parse::Error(400),
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Nothing here takes a body; a chunked one cannot be skipped cheaply.
            return Parse::Error(411);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if buf.len() < head_len + body {
        return Parse::Incomplete;
    }
    Parse::Request(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        length: head_len + body,
    })
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The page at this index of the paths routed over.
    Page(usize),
    /// An error status (see [`error_body`] and [`not_found_body`]).
    Refuse(u16),
}

/// Routes a request over the paths a listener serves, query ignored: GET or
/// HEAD of one of them is that page; any other path is 404 whatever the
/// method, another method on a served path 405. There is no default page.
pub fn route(method: &str, target: &str, paths: &[&str]) -> Route {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(page) = paths.iter().position(|p| *p == path) else {
        return Route::Refuse(404);
    };
    match method {
        "GET" | "HEAD" => Route::Page(page),
        _ => Route::Refuse(405),
    }
}

/// The body of a 404: the paths that are there.
pub fn not_found_body(paths: &[&str]) -> String {
    let tries: Vec<String> = paths.iter().map(|p| format!("GET {p}")).collect();
    format!("not found: try {}\n", tries.join(" or "))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The status line and headers of an answer with a body of `body_len` bytes.
pub fn response_head(
    status: u16,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n",
        reason(status)
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head.into_bytes()
}

/// The plain-text body of an error status other than 404.
pub fn error_body(status: u16) -> &'static str {
    match status {
        405 => "method not allowed: use GET\n",
        408 => "request timeout: the request did not arrive in time\n",
        411 => "length required: chunked bodies are not accepted\n",
        413 => "content too large: bodies over 64 KiB are refused\n",
        414 => "URI too long: request lines over 4 KiB are refused\n",
        431 => "request header fields too large: heads over 8 KiB are refused\n",
        505 => "HTTP version not supported: use HTTP/1.1 or HTTP/1.0\n",
        _ => "bad request\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: &[&str] = &["/report", "/metrics"];

    fn request(buf: &[u8]) -> RequestHead {
        match parse_request(buf) {
            Parse::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn scope_poll() {
        let r = request(b"GET /report?api_version=1&probe_id=abc HTTP/1.1\r\nHost: plugin\r\nAccept-Encoding: gzip\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/report?api_version=1&probe_id=abc");
        assert!(r.keep_alive);
        assert_eq!(route(&r.method, &r.target, PAGES), Route::Page(0));
    }

    #[test]
    fn http10_closes_unless_asked_and_needs_no_host() {
        assert!(!request(b"GET /metrics HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request(b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn incomplete_until_the_head_and_body_are_there() {
        assert_eq!(parse_request(b""), Parse::Incomplete);
        assert_eq!(
            parse_request(b"GET /report HTTP/1.1\r\nHost: x\r\n"),
            Parse::Incomplete
        );
        assert_eq!(
            parse_request(b"GET /report HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parse::Incomplete
        );
        let r = request(
            b"GET /report HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdeGET /metrics HTTP/1.1\r\n\r\n",
        );
        assert_eq!(r.length, 43 + 5);
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let buf = b"GET /report HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
        let first = request(buf);
        let second = request(&buf[first.length..]);
        assert_eq!(
            (first.target.as_str(), second.target.as_str()),
            ("/report", "/metrics")
        );
        assert_eq!(first.length + second.length, buf.len());
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused() {
        let mut big = b"GET /report HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse_request(&big), Parse::Error(431));
        big.extend(b"\r\n\r\n");
        assert_eq!(parse_request(&big), Parse::Error(431));
        assert_eq!(
            parse_request(b"GET /report HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"),
            Parse::Error(413)
        );
        assert_eq!(
            parse_request(b"GET /report HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parse::Error(400)
        );
        assert_eq!(
            parse_request(b"POST /report HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parse::Error(411)
        );
        assert_eq!(
            parse_request(b"\x00\xff\xfe garbage\r\n\r\n"),
            Parse::Error(400)
        );
        assert_eq!(parse_request(b"GET /report\r\n\r\n"), Parse::Error(400));
        assert_eq!(
            parse_request(b"GET /report HTTP/2.0\r\n\r\n"),
            Parse::Error(505)
        );
        assert_eq!(
            parse_request(b"get /report HTTP/1.1\r\n\r\n"),
            Parse::Error(400)
        );
        assert_eq!(
            parse_request(b"GET report HTTP/1.1\r\n\r\n"),
            Parse::Error(400)
        );
        assert_eq!(
            parse_request(b"GET /report HTTP/1.1\r\nno colon\r\n\r\n"),
            Parse::Error(400)
        );
    }

    #[test]
    fn routes() {
        let cases = [
            ("GET", "/report", Route::Page(0)),
            ("HEAD", "/metrics?x", Route::Page(1)),
            ("POST", "/report", Route::Refuse(405)),
            ("GET", "/", Route::Refuse(404)),
            ("DELETE", "/nope", Route::Refuse(404)),
            ("GET", "/reports", Route::Refuse(404)),
        ];
        for (method, target, expected) in cases {
            assert_eq!(route(method, target, PAGES), expected, "{method} {target}");
        }
        // A table without /report has no /report: no catch-all.
        assert_eq!(route("GET", "/report", &["/metrics"]), Route::Refuse(404));
        assert_eq!(route("GET", "/metrics", &[]), Route::Refuse(404));
    }

    #[test]
    fn refusal_bodies() {
        assert_eq!(
            not_found_body(PAGES),
            "not found: try GET /report or GET /metrics\n"
        );
        assert_eq!(
            not_found_body(&["/metrics"]),
            "not found: try GET /metrics\n"
        );
        assert_eq!(error_body(405), "method not allowed: use GET\n");
    }

    #[test]
    fn over_long_request_lines_are_414_and_over_long_heads_431() {
        let line_of = |target_len: usize| {
            let mut line = b"GET /".to_vec();
            line.extend(std::iter::repeat_n(b'a', target_len - 1));
            line.extend(b" HTTP/1.1\r\n");
            line
        };
        // An 8 KiB path, whole, still arriving, or with its headers.
        let mut whole = line_of(8 * 1024);
        whole.extend(b"Host: plugin\r\n\r\n");
        assert_eq!(parse_request(&whole), Parse::Error(414));
        assert_eq!(
            parse_request(&whole[..MAX_REQUEST_LINE + 1]),
            Parse::Error(414)
        );
        // A 100 KB request line, of which the worker buffers a part.
        let long = line_of(100_000);
        assert_eq!(parse_request(&long), Parse::Error(414));
        assert_eq!(
            parse_request(&long[..MAX_HEAD + 4 + MAX_BODY]),
            Parse::Error(414)
        );
        // The longest request line accepted.
        let mut longest = line_of(MAX_REQUEST_LINE - "GET  HTTP/1.1".len());
        assert_eq!(longest.len(), MAX_REQUEST_LINE + 2);
        longest.extend(b"\r\n");
        assert!(matches!(parse_request(&longest), Parse::Request(_)));
        let mut one_more = line_of(MAX_REQUEST_LINE + 1 - "GET  HTTP/1.1".len());
        one_more.extend(b"\r\n");
        assert_eq!(parse_request(&one_more), Parse::Error(414));
        // A short line with 8 KiB of headers is still 431.
        let mut headers = line_of(7);
        headers.extend(format!("X: {}\r\n\r\n", "b".repeat(MAX_HEAD)).bytes());
        assert_eq!(parse_request(&headers), Parse::Error(431));
    }

    #[test]
    fn response_heads() {
        let h = String::from_utf8(response_head(200, "application/json", 12, true)).unwrap();
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
        );
        let h = String::from_utf8(response_head(405, "text/plain", 3, false)).unwrap();
        assert!(h.contains("Allow: GET, HEAD\r\n") && h.ends_with("Connection: close\r\n\r\n"));
    }
}
