//! C strings in and out: arguments read as UTF-8 (NULL and bad UTF-8 are errors naming the
//! argument), results copied into the caller's buffer snprintf-style.

use std::ffi::{c_char, CStr};

use crate::fail::Fail;

/// The C string `p` (the argument called `what`) as text.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|e| Fail::utf8(what, e))
}

/// `n` C strings from the array `p` (NULL when `n` is 0).
///
/// # Safety
/// `p` is NULL or points to `n` pointers, each NULL or a NUL-terminated string.
pub(crate) unsafe fn texts(
    p: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<String>, Fail> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(Fail::null(what));
    }
    (0..n)
        .map(|i| text(*p.add(i), &format!("{what}[{i}]")).map(str::to_string))
        .collect()
}

/// Copies `s` into `buf` (`cap` bytes with the terminating NUL; a longer `s` is cut at a
/// character boundary) and returns `s`'s whole length in bytes, so that a caller can size its
/// buffer: `buf` may be NULL when `cap` is 0.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or `cap` is 0).
pub(crate) unsafe fn copy_out(s: &str, buf: *mut c_char, cap: usize) -> usize {
    if cap > 0 && !buf.is_null() {
        let mut n = s.len().min(cap - 1);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_cut_at_a_character_boundary() {
        let mut buf = [1 as c_char; 4];
        // "a≥b": '≥' is 3 bytes, so 3 bytes of room keep "a" only.
        assert_eq!(unsafe { copy_out("a≥b", buf.as_mut_ptr(), 3) }, 5);
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(), b"a");
        assert_eq!(unsafe { copy_out("ab", buf.as_mut_ptr(), 4) }, 2);
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(), b"ab");
        assert_eq!(unsafe { copy_out("ab", std::ptr::null_mut(), 0) }, 2);
    }
}
