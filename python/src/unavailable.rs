//! Stand-ins used when the configured Python is not one harrow supports: every entry point
//! reports [`Error::Unavailable`].

use crate::error::{Error, Result, unavailable_message};
use crate::state::Shared;

pub(crate) fn ensure_main() -> Result<()> {
    Err(Error::Unavailable(unavailable_message()))
}

pub(crate) fn inject_cancel(_shared: &Shared) {}

pub(crate) fn dump_stack(_shared: &Shared) -> String {
    format!("(python stacks unavailable: {})\n", unavailable_message())
}

pub(crate) fn wake_write(_fd: i32) {}
