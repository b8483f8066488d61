use crate::SniffError;

/// A cursor over one length-prefixed TLS structure of which only a prefix
/// may have arrived yet.
///
/// Keeping the declared length separate from the received bytes is what
/// lets the parser tell the two failure kinds apart: running past the
/// declared length can never be fixed by more input (`Malformed`), running
/// past the received bytes can (`Incomplete`). Every check is made as soon
/// as the bytes it needs are present, so a partial input is reported
/// `Incomplete` only if some continuation of it parses.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    /// Received bytes of this structure, never longer than `declared`.
    avail: &'a [u8],
    declared: usize,
    /// Invariant: `pos <= declared`.
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(received: &'a [u8], declared: usize) -> Self {
        let avail = received.get(..declared).unwrap_or(received);
        Self { avail, declared, pos: 0 }
    }

    pub(crate) fn declared_len(&self) -> usize {
        self.declared
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.declared
    }

    /// Received bytes from the cursor on; may be shorter than what remains.
    pub(crate) fn received_rest(&self) -> &'a [u8] {
        self.avail.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SniffError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.declared).ok_or(SniffError::Malformed(field))?;
        let bytes = self.avail.get(self.pos..end).ok_or(SniffError::Incomplete)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn take_rest(&mut self, field: &'static str) -> Result<&'a [u8], SniffError> {
        self.take(self.declared.saturating_sub(self.pos), field)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, SniffError> {
        match self.take(1, field)? {
            [b] => Ok(*b),
            _ => Err(SniffError::Malformed(field)),
        }
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, SniffError> {
        match self.take(2, field)? {
            [hi, lo] => Ok(u16::from_be_bytes([*hi, *lo])),
            _ => Err(SniffError::Malformed(field)),
        }
    }

    /// Splits off the next `len` bytes as their own structure. Unlike
    /// [`take`](Self::take) this does not need those bytes to have arrived,
    /// so a length field can be checked against its container before the
    /// data it announces is received.
    pub(crate) fn sub(&mut self, len: usize, field: &'static str) -> Result<Reader<'a>, SniffError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.declared).ok_or(SniffError::Malformed(field))?;
        let child = Reader::new(self.received_rest(), len);
        self.pos = end;
        Ok(child)
    }

    /// A `opaque field<..2^8-1>` vector.
    pub(crate) fn vec8(&mut self, field: &'static str) -> Result<Reader<'a>, SniffError> {
        let len = self.u8(field)?;
        self.sub(usize::from(len), field)
    }

    /// A `opaque field<..2^16-1>` vector.
    pub(crate) fn vec16(&mut self, field: &'static str) -> Result<Reader<'a>, SniffError> {
        let len = self.u16(field)?;
        self.sub(usize::from(len), field)
    }

    /// Succeeds only if the structure was consumed exactly and has fully
    /// arrived; skipped sub-structures are not checked for arrival
    /// elsewhere, so this is where a hello whose tail is still in flight is
    /// caught.
    pub(crate) fn finish(&self, field: &'static str) -> Result<(), SniffError> {
        if self.pos != self.declared {
            return Err(SniffError::Malformed(field));
        }
        if self.avail.len() < self.declared {
            return Err(SniffError::Incomplete);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrun_of_declared_length_is_malformed_even_without_data() {
        let mut r = Reader::new(&[], 3);
        assert_eq!(r.take(4, "x"), Err(SniffError::Malformed("x")));
        assert_eq!(r.take(3, "x"), Err(SniffError::Incomplete));
    }

    #[test]
    fn sub_checks_length_before_data_arrives() {
        let mut r = Reader::new(&[0x00, 0x05], 7);
        let mut child = r.vec16("v").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(child.take(1, "c"), Err(SniffError::Incomplete));
        // The announced 5 bytes cannot fit in the 2 left of the container.
        let mut r = Reader::new(&[0x00, 0x05], 4);
        assert_eq!(r.vec16("v").map(|_| ()), Err(SniffError::Malformed("v")));
    }

    #[test]
    fn finish_distinguishes_trailing_bytes_from_missing_ones() {
        let mut r = Reader::new(&[1, 2], 2);
        assert_eq!(r.finish("f"), Err(SniffError::Malformed("f")));
        assert!(r.take(2, "t").is_ok());
        assert_eq!(r.finish("f"), Ok(()));

        let mut r = Reader::new(&[1], 3);
        assert!(r.sub(3, "s").is_ok());
        assert_eq!(r.finish("f"), Err(SniffError::Incomplete));
    }
}
