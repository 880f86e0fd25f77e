//! Size-prefixed frames: every Kafka request and response is a big-endian `i32` length
//! followed by that many bytes. The length is checked against the configured maximum
//! before any buffer is reserved for the body.

/// Why a frame length prefix was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("frame length {0} is shorter than a request header")]
    TooShort(i32),
    #[error("frame length {length} exceeds socket.request.max.bytes {max_bytes}")]
    TooLarge { length: i32, max_bytes: usize },
}

/// The smallest request body that can hold a header: api key, version and correlation id.
pub const REQUEST_HEADER_MIN_BYTES: usize = 8;

/// Validates a 4-byte length prefix and returns the body length it announces.
pub fn request_frame_length(prefix: [u8; 4], max_bytes: usize) -> Result<usize, FrameError> {
    let length = i32::from_be_bytes(prefix);
    if length < 0 {
        return Err(FrameError::Negative(length));
    }
    let body_bytes = length as usize;
    if body_bytes > max_bytes {
        return Err(FrameError::TooLarge { length, max_bytes });
    }
    if body_bytes < REQUEST_HEADER_MIN_BYTES {
        return Err(FrameError::TooShort(length));
    }
    Ok(body_bytes)
}

/// The fixed part of every request header: api key, api version, correlation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl HeaderPrefix {
    /// Reads the header prefix of a request body; `None` if the body is too short.
    pub fn parse(body: &[u8]) -> Option<HeaderPrefix> {
        let bytes: &[u8; 8] = body.get(..8)?.try_into().ok()?;
        Some(HeaderPrefix {
            api_key: i16::from_be_bytes([bytes[0], bytes[1]]),
            api_version: i16::from_be_bytes([bytes[2], bytes[3]]),
            correlation_id: i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_and_oversized_lengths_are_refused_before_allocation() {
        assert_eq!(
            request_frame_length((-1i32).to_be_bytes(), 100),
            Err(FrameError::Negative(-1))
        );
        assert_eq!(
            request_frame_length(101i32.to_be_bytes(), 100),
            Err(FrameError::TooLarge {
                length: 101,
                max_bytes: 100
            })
        );
        assert_eq!(
            request_frame_length(3i32.to_be_bytes(), 100),
            Err(FrameError::TooShort(3))
        );
        assert_eq!(request_frame_length(100i32.to_be_bytes(), 100), Ok(100));
    }

    #[test]
    fn header_prefix_parses_big_endian_fields() {
        let body = [0, 18, 0, 3, 0, 0, 0, 7, 0xff];
        let prefix = HeaderPrefix::parse(&body).expect("long enough");
        assert_eq!(prefix.api_key, 18);
        assert_eq!(prefix.api_version, 3);
        assert_eq!(prefix.correlation_id, 7);
        assert!(HeaderPrefix::parse(&body[..7]).is_none());
    }
}
