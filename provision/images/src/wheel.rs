//! Shared libraries out of NVIDIA's PyPI wheels (cuBLAS, NVRTC) for the CUDA image.
//!
//! A wheel is a zip file. Reading one takes the central directory, the local headers and
//! inflate, so it is done here (flate2 does the inflating) rather than with a zip crate
//! or an `unzip` on the operator's machine. Zip64 archives are refused with a clear
//! error: NVIDIA's wheels are below 4 GiB and do not use it.

use std::io::Read;
use std::path::Path;

use crate::ImageError;

/// A shared library found in a wheel: its file name (e.g. `libcublas.so.13`) and bytes.
#[derive(Debug, Clone)]
pub struct Library {
    pub file_name: String,
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every `lib/*.so*` file of the wheel at `path` (NVIDIA's layout: `nvidia/<component>/lib/`).
pub fn shared_libraries(path: &Path) -> Result<Vec<Library>, ImageError> {
    let bad = |reason: &str| ImageError::Wheel { path: path.to_path_buf(), reason: reason.to_string() };
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes.
    let floor = bytes.len().saturating_sub(65_557);
    let eocd = (floor..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&bytes, i) == Some(0x0605_4b50))
        .ok_or_else(|| bad("not a zip file (no end of central directory)"))?;
    let count = u16_at(&bytes, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let cd_offset = u32_at(&bytes, eocd + 16).ok_or_else(|| bad("truncated"))?;
    if count == u16::MAX || cd_offset == u32::MAX {
        return Err(bad("zip64 archives are not supported"));
    }
    let mut libs = Vec::new();
    let mut at = cd_offset as usize;
    for _ in 0..count {
        if u32_at(&bytes, at) != Some(0x0201_4b50) {
            return Err(bad("corrupt central directory"));
        }
        let field16 = |o| u16_at(&bytes, at + o).map(usize::from).ok_or_else(|| bad("truncated"));
        let field32 = |o| u32_at(&bytes, at + o).map(|v| v as usize).ok_or_else(|| bad("truncated"));
        let method = field16(10)?;
        let compressed = field32(20)?;
        let size = field32(24)?;
        let (name_len, extra_len, comment_len) = (field16(28)?, field16(30)?, field16(32)?);
        let local = field32(42)?;
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("truncated"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        at += 46 + name_len + extra_len + comment_len;

        let mut parts = name.rsplit('/');
        let file_name = parts.next().unwrap_or_default().to_string();
        let in_lib = parts.next() == Some("lib") && name.starts_with("nvidia/");
        if !in_lib || !file_name.contains(".so") {
            continue;
        }
        if u32_at(&bytes, local) != Some(0x0403_4b50) {
            return Err(bad(&format!("corrupt local header of {name}")));
        }
        let lname = u16_at(&bytes, local + 26).map(usize::from).ok_or_else(|| bad("truncated"))?;
        let lextra = u16_at(&bytes, local + 28).map(usize::from).ok_or_else(|| bad("truncated"))?;
        let start = local + 30 + lname + lextra;
        let raw = bytes.get(start..start + compressed).ok_or_else(|| bad(&format!("{name} is truncated")))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(&format!("{name}: {e}")))?;
                out
            }
            m => return Err(bad(&format!("{name}: compression method {m} is not supported"))),
        };
        if data.len() != size {
            return Err(bad(&format!("{name}: expected {size} bytes, inflated {}", data.len())));
        }
        libs.push(Library { file_name, data });
    }
    Ok(libs)
}
