//! Primitive encoders for the few responses Strom writes by hand (the zero-copy Fetch
//! response, whose record bytes are sent from the segment file and never encoded).

use bytes::BufMut;

/// Appends an unsigned varint (the length encoding of flexible versions).
pub fn put_unsigned_varint(out: &mut impl BufMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Appends an array length: `i32` in classic versions, `len + 1` as a varint in flexible ones.
pub fn put_array_len(out: &mut impl BufMut, len: usize, flexible: bool) {
    if flexible {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_i32(len as i32);
    }
}

/// Appends a nullable array length (`None` is the null array).
pub fn put_nullable_array_len(out: &mut impl BufMut, len: Option<usize>, flexible: bool) {
    match (len, flexible) {
        (Some(len), _) => put_array_len(out, len, flexible),
        (None, true) => put_unsigned_varint(out, 0),
        (None, false) => out.put_i32(-1),
    }
}

/// Appends a non-null string.
pub fn put_string(out: &mut impl BufMut, value: &str, flexible: bool) {
    if flexible {
        put_unsigned_varint(out, value.len() as u32 + 1);
    } else {
        out.put_i16(value.len() as i16);
    }
    out.put_slice(value.as_bytes());
}

/// Appends the length of a (nullable) bytes field whose content follows separately.
pub fn put_bytes_len(out: &mut impl BufMut, len: usize, flexible: bool) {
    if flexible {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_i32(len as i32);
    }
}

/// Appends an empty tagged-field section (flexible versions only).
pub fn put_empty_tagged_fields(out: &mut impl BufMut, flexible: bool) {
    if flexible {
        out.put_u8(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_varints_match_kafkas_encoding() {
        let mut out = Vec::new();
        put_unsigned_varint(&mut out, 0);
        put_unsigned_varint(&mut out, 127);
        put_unsigned_varint(&mut out, 128);
        put_unsigned_varint(&mut out, 300);
        assert_eq!(out, [0, 127, 0x80, 1, 0xac, 2]);
    }

    #[test]
    fn arrays_and_strings_in_both_encodings() {
        let mut out = Vec::new();
        put_array_len(&mut out, 2, false);
        put_array_len(&mut out, 2, true);
        put_nullable_array_len(&mut out, None, false);
        put_nullable_array_len(&mut out, None, true);
        put_string(&mut out, "ab", false);
        put_string(&mut out, "ab", true);
        assert_eq!(
            out,
            [0, 0, 0, 2, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 2, b'a', b'b', 3, b'a', b'b']
        );
    }
}
