//! Reading IDX files, the format MNIST (and Fashion-MNIST, KMNIST, EMNIST) ships in.
//!
//! An IDX file is a 4-byte magic number — two zero bytes, an element-type code,
//! the number of dimensions — then each dimension as a big-endian `u32`, then
//! the elements in row-major order. Files are often gzipped; we recognise gzip
//! by its own magic bytes (`1f 8b`), not by the file name, so a renamed file
//! still reads.
//!
//! Every check names the file and the problem: a user with a truncated download
//! must see "truncated", not an index-out-of-bounds panic.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use byteorder::{BigEndian, ReadBytesExt};
use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// The element type code for unsigned bytes, the only one MNIST-format data uses.
const UNSIGNED_BYTE: u8 = 0x08;
/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// More dimensions than this is not an image or label file.
const MAX_DIMS: u8 = 4;

/// The contents of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes of the dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The elements, row-major; `bytes.len()` is the product of `dims`.
    pub bytes: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, raw or gzipped.
///
/// Fails with [`Error::Io`] if the file cannot be read or its gzip stream is
/// corrupt, and with [`Error::BadFile`] if the magic number, the dimensions or
/// the length of the data are wrong.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(io_error)?);
    let mut first_two = [0u8; 2];
    let got = read_up_to(&mut file, &mut first_two).map_err(io_error)?;
    let prefix = std::io::Cursor::new(first_two[..got].to_vec());
    if got == 2 && first_two == GZIP_MAGIC {
        parse_idx(GzDecoder::new(prefix.chain(file)), path)
    } else {
        parse_idx(prefix.chain(file), path)
    }
}

/// Parses an IDX stream; `path` only names the source in errors.
pub fn parse_idx(mut reader: impl Read, path: &Path) -> Result<IdxArray> {
    let bad = |problem: String| Error::BadFile {
        path: path.to_path_buf(),
        problem,
    };
    let read_failed = |source: std::io::Error, what: &str| {
        if source.kind() == ErrorKind::UnexpectedEof {
            bad(format!("truncated: the file ends inside the {what}"))
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };

    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| read_failed(e, "4-byte magic number"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad(format!(
            "not an IDX file: the magic number starts with {:#04x} {:#04x}, expected 0x00 0x00",
            magic[0], magic[1]
        )));
    }
    if magic[2] != UNSIGNED_BYTE {
        return Err(bad(format!(
            "unsupported IDX element type {:#04x}: only unsigned bytes ({UNSIGNED_BYTE:#04x}) are supported",
            magic[2]
        )));
    }
    let ndims = magic[3];
    if ndims == 0 || ndims > MAX_DIMS {
        return Err(bad(format!(
            "the magic number declares {ndims} dimensions; expected 1 to {MAX_DIMS}"
        )));
    }

    let mut dims = Vec::with_capacity(ndims as usize);
    for _ in 0..ndims {
        let size = reader
            .read_u32::<BigEndian>()
            .map_err(|e| read_failed(e, "dimension header"))?;
        dims.push(size as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow the address space")))?;

    // Read at most one byte more than promised: enough to tell "too long"
    // from "exact" without trusting the header for an allocation size.
    let mut bytes = Vec::new();
    reader
        .take((expected as u64).saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| read_failed(e, "data"))?;
    if bytes.len() < expected {
        return Err(bad(format!(
            "truncated: the header declares dimensions {dims:?} ({expected} bytes of data) but only {} bytes follow",
            bytes.len()
        )));
    }
    if bytes.len() > expected {
        return Err(bad(format!(
            "trailing bytes: the header declares dimensions {dims:?} ({expected} bytes of data) but the file holds more"
        )));
    }
    Ok(IdxArray { dims, bytes })
}

/// Fills as much of `buf` as the reader has, stopping early only at end of file.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn parse(bytes: &[u8]) -> Result<IdxArray> {
        parse_idx(bytes, Path::new("test.idx"))
    }

    #[test]
    fn reads_a_well_formed_array() {
        let array = parse(&idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(array.dims, vec![2, 3]);
        assert_eq!(array.bytes, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn short_data_is_reported_as_truncated() {
        let err = parse(&idx_bytes(&[2, 3], &[1, 2, 3])).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(err.to_string().contains("test.idx"), "{err}");
    }

    #[test]
    fn dimensions_that_fill_the_address_space_are_truncated() {
        // 1 722 007 169 · 42 009 217 · 255 = 2⁶⁴ − 1 bytes: the product fits a
        // 64-bit `usize` exactly, one byte more does not.
        let err = parse(&idx_bytes(&[1_722_007_169, 42_009_217, 255], &[1, 2, 3])).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_file_ending_in_the_header_is_truncated() {
        let bytes = idx_bytes(&[2, 3], &[]);
        let err = parse(&bytes[..6]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn extra_data_is_reported() {
        let err = parse(&idx_bytes(&[2], &[1, 2, 3])).unwrap_err();
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    #[test]
    fn wrong_magic_is_reported() {
        let mut bytes = idx_bytes(&[1], &[7]);
        bytes[0] = 0x42;
        let err = parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("not an IDX file"), "{err}");
    }

    #[test]
    fn float_elements_are_unsupported() {
        let mut bytes = idx_bytes(&[1], &[0, 0, 0, 0]);
        bytes[2] = 0x0D;
        let err = parse(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("unsupported IDX element type"),
            "{err}"
        );
    }

    #[test]
    fn zero_dimensions_are_refused() {
        let err = parse(&[0, 0, UNSIGNED_BYTE, 0]).unwrap_err();
        assert!(err.to_string().contains("0 dimensions"), "{err}");
    }
}
