//! A minimal protocol-buffers wire encoder: just what writing an ONNX model
//! needs (varints and length-delimited fields: strings, bytes, nested
//! messages; tensors carry their floats as little-endian `raw_data`).
//! Fields are written in the order the caller adds them; callers add them in
//! field-number order, as protobuf's own serialisers do.

/// One message being encoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Message {
    buf: Vec<u8>,
}

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Message {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn tag(&mut self, field: u32, wire: u32) {
        put_varint(&mut self.buf, u64::from(field << 3 | wire));
    }

    /// `int32`/`int64`/enum field: negative values are sign-extended to ten
    /// bytes, as protobuf specifies.
    pub(crate) fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.tag(field, VARINT);
        put_varint(&mut self.buf, v as u64);
        self
    }

    pub(crate) fn bytes(&mut self, field: u32, data: &[u8]) -> &mut Self {
        self.tag(field, LEN);
        put_varint(&mut self.buf, data.len() as u64);
        self.buf.extend_from_slice(data);
        self
    }

    pub(crate) fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    pub(crate) fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.buf)
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    }

    #[test]
    fn varints_match_the_protobuf_spec() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7F]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xAC, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    #[test]
    fn fields_match_the_protobuf_spec() {
        // The examples of the protobuf encoding guide.
        let mut m = Message::new();
        m.int(1, 150);
        assert_eq!(m.clone().into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.string(2, "testing");
        assert_eq!(
            m.into_bytes(),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        let mut inner = Message::new();
        inner.int(1, 150);
        let mut m = Message::new();
        m.message(3, &inner);
        assert_eq!(m.into_bytes(), [0x1A, 0x03, 0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.int(1, -1);
        assert_eq!(
            m.into_bytes(),
            [
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01
            ]
        );
        // Field numbers above 15 take a two-byte tag (ONNX's `type` = 20).
        let mut m = Message::new();
        m.int(20, 2);
        assert_eq!(m.into_bytes(), [0xA0, 0x01, 0x02]);
    }
}
