//! Content negotiation for answers: `Accept-Encoding` (RFC 9110 §12.5.3)
//! picks zstd, gzip or none. Browsers send `gzip, deflate, br, zstd`;
//! Grafana and most HTTP libraries send `gzip`. An answer is compressed
//! once, when first asked for in that coding, and kept with the answer
//! (see [`crate::cache`]).

use std::io::Write;

use axum::http::HeaderMap;
use axum::http::header::ACCEPT_ENCODING;

/// Answers shorter than this go uncompressed: the framing would eat the gain.
pub const MIN_COMPRESS_BYTES: usize = 1024;

/// gzip's level: zlib's default, its usual speed/size balance.
const GZIP_LEVEL: u32 = 6;
/// zstd's level: its default, faster than gzip at 6 and smaller.
const ZSTD_LEVEL: i32 = 3;

/// A content coding serving can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Identity,
    /// `gzip` (also asked for as `x-gzip`).
    Gzip,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` value, `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
        }
    }

    /// `body` in this coding; `None` when it cannot be (never expected:
    /// both encoders write to memory), so the caller sends it as is.
    pub fn compress(self, body: &[u8]) -> Option<Vec<u8>> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 4),
                    flate2::Compression::new(GZIP_LEVEL),
                );
                encoder.write_all(body).ok()?;
                encoder.finish().ok()
            }
            Encoding::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL).ok(),
        }
    }
}

/// The coding to answer a request with, from its `Accept-Encoding`
/// headers: the acceptable one (q > 0) with the highest q, zstd before gzip
/// on a tie; identity when neither is acceptable or nothing is asked. A
/// client that refuses identity too (`identity;q=0`) still gets identity
/// when it accepts neither: RFC 9110 lets a server send it rather than 406,
/// and a dashboard would rather have an answer.
pub fn negotiate(headers: &HeaderMap) -> Encoding {
    let (mut gzip, mut zstd, mut star) = (None, None, None);
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = Some(1.0);
            for param in parts {
                if let Some((name, v)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(v.trim());
                }
            }
            // An unreadable q makes the item mean nothing (ignored).
            let Some(q) = q else { continue };
            if coding.eq_ignore_ascii_case("zstd") {
                zstd = Some(q);
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q);
            } else if coding == "*" {
                star = Some(q);
            }
        }
    }
    let zstd = zstd.or(star).unwrap_or(0.0);
    let gzip = gzip.or(star).unwrap_or(0.0);
    if zstd > 0.0 && zstd >= gzip {
        Encoding::Zstd
    } else if gzip > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

/// The coding a request's `Accept-Encoding` asks for ([`negotiate`]), as an
/// extractor: read from the request's headers where they are (taking the
/// whole `HeaderMap` copied it for every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted(pub Encoding);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Accepted {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Accepted(negotiate(&parts.headers)))
    }
}

/// A q-value: 0 to 1 with at most three decimals (RFC 9110 §12.4.2).
fn qvalue(text: &str) -> Option<f32> {
    let ok = match text.split_once('.') {
        None => text == "0" || text == "1",
        Some((whole, frac)) => {
            frac.len() <= 3
                && frac.bytes().all(|b| b.is_ascii_digit())
                && (whole == "0" || (whole == "1" && frac.bytes().all(|b| b == b'0')))
        }
    };
    if ok { text.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(values: &[&str]) -> Encoding {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(ACCEPT_ENCODING, v.parse().unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn what_browsers_grafana_and_curl_send() {
        // Chrome and Firefox.
        assert_eq!(pick(&["gzip, deflate, br, zstd"]), Encoding::Zstd);
        // Grafana (Go's client), most libraries.
        assert_eq!(pick(&["gzip"]), Encoding::Gzip);
        // curl without --compressed, or nothing at all.
        assert_eq!(pick(&[]), Encoding::Identity);
        assert_eq!(pick(&["identity"]), Encoding::Identity);
        assert_eq!(pick(&["br, deflate"]), Encoding::Identity);
    }

    #[test]
    fn q_values_decide_and_zero_refuses() {
        assert_eq!(pick(&["zstd;q=0.5, gzip;q=0.8"]), Encoding::Gzip);
        assert_eq!(pick(&["zstd;q=0.8, gzip;q=0.8"]), Encoding::Zstd);
        assert_eq!(pick(&["gzip;q=0, zstd;q=0"]), Encoding::Identity);
        assert_eq!(pick(&["zstd;q=0", "gzip"]), Encoding::Gzip);
        assert_eq!(pick(&["GZIP ; Q=1.000"]), Encoding::Gzip);
        assert_eq!(pick(&["x-gzip"]), Encoding::Gzip);
        // `*` stands for what is not named.
        assert_eq!(pick(&["*"]), Encoding::Zstd);
        assert_eq!(pick(&["zstd;q=0, *;q=0.1"]), Encoding::Gzip);
        assert_eq!(pick(&["*;q=0"]), Encoding::Identity);
        // Refusing identity too still gets an answer, as is.
        assert_eq!(pick(&["identity;q=0, *;q=0"]), Encoding::Identity);
    }

    #[test]
    fn unreadable_q_values_are_ignored_not_trusted() {
        for bad in [
            "gzip;q=2",
            "gzip;q=1.5",
            "gzip;q=-1",
            "gzip;q=0.1234",
            "gzip;q=abc",
            "gzip;q=",
        ] {
            assert_eq!(pick(&[bad]), Encoding::Identity, "{bad}");
        }
        assert_eq!(pick(&["gzip;q=0.001"]), Encoding::Gzip);
        assert_eq!(pick(&["gzip;q=1."]), Encoding::Gzip);
    }

    #[test]
    fn both_codings_round_trip() {
        let body = br#"{"buckets":[{"start":0,"clicks":1}]}"#.repeat(200);
        let gz = Encoding::Gzip.compress(&body).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, body);
        let zs = Encoding::Zstd.compress(&body).unwrap();
        assert_eq!(zstd::bulk::decompress(&zs, body.len()).unwrap(), body);
        assert!(gz.len() < body.len() / 4 && zs.len() < body.len() / 4);
        assert_eq!(Encoding::Identity.compress(&body), None);
    }
}
