//! A failed call: its status code and message.

use lorafuse::api::{ApiError, Problem};

use crate::{
    LORAFUSE_ERR_BUSY, LORAFUSE_ERR_FAILED, LORAFUSE_ERR_INVALID, LORAFUSE_ERR_NOT_STARTED,
    LORAFUSE_ERR_NULL, LORAFUSE_ERR_PANIC, LORAFUSE_ERR_REFUSED, LORAFUSE_ERR_UTF8,
};

#[derive(Clone, Debug)]
pub(crate) struct Fail {
    pub code: i32,
    pub message: String,
    /// The configuration's problems, for `LORAFUSE_ERR_INVALID`.
    pub problems: Vec<Problem>,
}

impl Fail {
    pub fn new(code: i32, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
    pub fn null(what: &str) -> Fail {
        Fail::new(LORAFUSE_ERR_NULL, format!("{what} is NULL"))
    }
    pub fn utf8(what: &str, e: std::str::Utf8Error) -> Fail {
        Fail::new(
            LORAFUSE_ERR_UTF8,
            format!("{what} is not valid UTF-8 ({e}): pass UTF-8 text"),
        )
    }
    pub fn busy() -> Fail {
        Fail::new(
            LORAFUSE_ERR_BUSY,
            "this trainer has a run that was started and not waited for: call lorafuse_wait first",
        )
    }
    pub fn not_started() -> Fail {
        Fail::new(
            LORAFUSE_ERR_NOT_STARTED,
            "this trainer has not started a run: call lorafuse_start first",
        )
    }
    pub fn invalid(problems: Vec<Problem>) -> Fail {
        let message = problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Fail {
            code: LORAFUSE_ERR_INVALID,
            message,
            problems,
        }
    }
    /// A panic caught at the boundary (a bug in lorafuse: please report it).
    pub fn panic(payload: Box<dyn std::any::Any + Send>) -> Fail {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Fail::new(
            LORAFUSE_ERR_PANIC,
            format!("internal error in lorafuse (please report it): {what}"),
        )
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        match e {
            ApiError::Invalid(p) => Fail::invalid(p),
            ApiError::Refused(why) => Fail::new(LORAFUSE_ERR_REFUSED, why),
            ApiError::Failed(e) => Fail::new(LORAFUSE_ERR_FAILED, e.to_string()),
        }
    }
}
