//! The input of a before-change chain, shared by its plugins.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::hooks::outcome::Subject;
use crate::metadata::MetadataChange;

/// What every plugin of a before-change chain is given: the subject and the
/// change, converted to each WIT version's form at most once, when a plugin
/// of that version first needs it. The plugins of a chain share it until
/// one of them rewrites the change; a rewrite starts a new one.
///
/// Each WIT version keeps its form in a slot of its own (`ChangeInput::wit`), so
/// this type does not name the versions' types (the version modules depend
/// on the runtime, not the other way round).
pub struct ChangeInput {
    pub(crate) subject: Subject,
    pub(crate) change: MetadataChange,
    wit: [OnceLock<Box<dyn Any + Send + Sync>>; WIT_SLOTS],
}

/// The slot of each WIT version in `ChangeInput::wit`.
pub(crate) const V0_1_0: usize = 0;
pub(crate) const V0_2_0: usize = 1;
const WIT_SLOTS: usize = 2;

impl ChangeInput {
    /// The input of a chain about `change` to `subject`'s session.
    pub fn new(subject: Subject, change: MetadataChange) -> Arc<Self> {
        Arc::new(Self {
            subject,
            change,
            wit: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    /// The form in `slot` (one per WIT version, which always stores the
    /// same type there), made by `make` on first use.
    pub(crate) fn wit<T: Any + Send + Sync>(
        &self,
        slot: usize,
        make: impl FnOnce(&Subject, &MetadataChange) -> T,
    ) -> &T {
        self.wit[slot]
            .get_or_init(|| Box::new(make(&self.subject, &self.change)))
            .downcast_ref::<T>()
            .expect("a WIT version stores one type in its slot")
    }

    /// The change, taken back at the end of the chain (cloned only when a
    /// call that outlived its caller still holds it).
    pub fn into_change(self: Arc<Self>) -> MetadataChange {
        Arc::try_unwrap(self).map_or_else(|shared| shared.change.clone(), |input| input.change)
    }
}
