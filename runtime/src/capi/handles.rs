//! Generation-checked handles: what C holds instead of addresses. A handle encodes a registry
//! tag, a slot index and the slot's generation, so a freed, forged or wrong-kind handle is
//! reported as an error instead of being dereferenced; values are reference-counted, so a
//! free racing with a running call only takes effect when the call ends.

use super::{DistqStatus, Failure};
use std::sync::{Arc, Mutex};

/// Bits of a handle: [tag | generation | index + 1]. Pointer-sized, so 32-bit targets get
/// fewer generations (a slot's stale handles are caught until it is reused 4096 times).
const INDEX_BITS: u32 = if usize::BITS == 64 { 32 } else { 18 };
const TAG_BITS: u32 = if usize::BITS == 64 { 4 } else { 2 };
const GENERATION_BITS: u32 = usize::BITS - INDEX_BITS - TAG_BITS;

/// One kind of object (sessions, outputs) and its live values.
pub(crate) struct Handles<T> {
    tag: usize,
    slots: Mutex<Vec<Slot<T>>>,
}

struct Slot<T> {
    generation: usize,
    value: Option<Arc<T>>,
}

impl<T> Handles<T> {
    /// An empty registry; `tag` (1.. < 2^TAG_BITS) tells its handles from other kinds'.
    pub(crate) const fn new(tag: usize) -> Handles<T> {
        Handles { tag, slots: Mutex::new(Vec::new()) }
    }

    fn encode(&self, index: usize, generation: usize) -> usize {
        (self.tag << (INDEX_BITS + GENERATION_BITS)) | (generation << INDEX_BITS) | (index + 1)
    }

    /// (index, generation) of a handle of this registry's kind.
    fn decode(&self, handle: usize) -> Option<(usize, usize)> {
        let index = (handle & ((1 << INDEX_BITS) - 1)).checked_sub(1)?;
        let generation = (handle >> INDEX_BITS) & ((1 << GENERATION_BITS) - 1);
        (handle >> (INDEX_BITS + GENERATION_BITS) == self.tag).then_some((index, generation))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot<T>>> {
        // A panic while holding the lock leaves the slots consistent (each step is one write).
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `value`; `None` when every slot is taken.
    pub(crate) fn insert(&self, value: T) -> Option<usize> {
        let mut slots = self.slots();
        let index = match slots.iter().position(|s| s.value.is_none()) {
            Some(free) => free,
            None if slots.len() < (1 << INDEX_BITS) - 1 => {
                slots.push(Slot { generation: 0, value: None });
                slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut slots[index];
        slot.value = Some(Arc::new(value));
        Some(self.encode(index, slot.generation))
    }

    /// The live value behind `handle`, if it is one of this registry's and not yet removed.
    pub(crate) fn get(&self, handle: usize) -> Option<Arc<T>> {
        let (index, generation) = self.decode(handle)?;
        let slots = self.slots();
        let slot = slots.get(index).filter(|s| s.generation == generation)?;
        slot.value.clone()
    }

    /// The live value behind a C handle of kind `what`: NULL, freed, forged and wrong-kind
    /// handles are failures, never dereferenced.
    pub(crate) fn resolve(&self, handle: *const T, what: &str) -> Result<Arc<T>, Failure> {
        if handle.is_null() {
            return Err(Failure::new(DistqStatus::NullArgument, format!("{what} is NULL")));
        }
        self.get(handle as usize).ok_or_else(|| {
            let message = format!("{what} {handle:p} is not a live {what} handle (freed already, or of another kind)");
            Failure::new(DistqStatus::InvalidArgument, message)
        })
    }

    /// Removes the value behind `handle` (dropped once no call holds it); false if `handle` is
    /// not live.
    pub(crate) fn remove(&self, handle: usize) -> bool {
        let Some((index, generation)) = self.decode(handle) else { return false };
        let removed = {
            let mut slots = self.slots();
            match slots.get_mut(index).filter(|s| s.generation == generation && s.value.is_some()) {
                Some(slot) => {
                    slot.generation = (slot.generation + 1) & ((1 << GENERATION_BITS) - 1);
                    slot.value.take()
                }
                None => None,
            }
        };
        // Dropped outside the lock: dropping a session frees its memory map and buffers.
        removed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_forged_and_foreign_handles_are_refused() {
        let strings: Handles<String> = Handles::new(1);
        let numbers: Handles<u32> = Handles::new(2);
        let a = strings.insert("a".into()).unwrap();
        let n = numbers.insert(7).unwrap();
        assert_eq!(strings.get(a).as_deref().map(String::as_str), Some("a"));
        assert!(strings.get(n).is_none(), "a handle of another kind");
        assert!(strings.get(0).is_none() && strings.get(usize::MAX).is_none() && strings.get(a + 1).is_none());

        let held = strings.get(a).unwrap();
        assert!(strings.remove(a));
        assert!(!strings.remove(a), "a second free");
        assert!(strings.get(a).is_none(), "a freed handle");
        assert_eq!(*held, "a", "a call holding the value keeps it alive");

        let b = strings.insert("b".into()).unwrap();
        assert_ne!(a, b, "the reused slot has a new generation");
        assert!(strings.get(a).is_none());
        assert_eq!(strings.get(b).as_deref().map(String::as_str), Some("b"));
        assert_eq!(numbers.get(n).as_deref(), Some(&7));
    }
}
