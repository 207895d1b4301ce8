//! Call signatures and the per-connection table interning them as call ids.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use super::AgentError;

/// Most signatures one connection may define (call ids are `0..MAX_CALLS`).
pub const MAX_CALLS: usize = 4096;

/// What a call invokes, borrowed: the key a DEFINE frame binds to a call id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignatureRef<'a> {
    /// Service (interface) name, e.g. `com.example.Hello`.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// Parameter types as JVM descriptors, e.g. `Ljava/lang/String;`.
    pub parameter_types: &'a str,
    /// Service version (empty if none).
    pub version: &'a str,
    /// Service group (empty if none).
    pub group: &'a str,
}

impl SignatureRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Signature {
        Signature {
            service: self.service.to_owned(),
            method: self.method.to_owned(),
            parameter_types: self.parameter_types.to_owned(),
            version: self.version.to_owned(),
            group: self.group.to_owned(),
        }
    }
}

/// What a call invokes, owned: kept in a [`CallTable`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Signature {
    /// Service (interface) name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Parameter types as JVM descriptors.
    pub parameter_types: String,
    /// Service version (empty if none).
    pub version: String,
    /// Service group (empty if none).
    pub group: String,
}

impl Signature {
    /// A borrowed view, for [`CallTable::intern`] and the encoders.
    pub fn as_ref(&self) -> SignatureRef<'_> {
        SignatureRef {
            service: &self.service,
            method: &self.method,
            parameter_types: &self.parameter_types,
            version: &self.version,
            group: &self.group,
        }
    }
}

/// The call ids of one connection.
///
/// The sending side calls [`intern`](Self::intern) per request (a hash lookup; allocation
/// only for a new signature) and sends a DEFINE frame when it reports a new id. The
/// receiving side calls [`define`](Self::define) for each DEFINE frame and
/// [`get`](Self::get) per request. Bounded by [`MAX_CALLS`].
#[derive(Debug, Clone, Default)]
pub struct CallTable {
    sigs: Vec<Option<Signature>>,
    /// Signature hash -> ids with that hash (collisions are compared field by field).
    index: HashMap<u64, Vec<u32>>,
    hasher: RandomState,
    next: u32,
    defined: usize,
}

impl CallTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of signatures defined.
    pub fn len(&self) -> usize {
        self.defined
    }

    /// Whether no signature is defined.
    pub fn is_empty(&self) -> bool {
        self.defined == 0
    }

    /// Sender side: the id for `sig`, and whether it is new (send a DEFINE frame first).
    ///
    /// # Errors
    ///
    /// [`AgentError::CallTableFull`] once [`MAX_CALLS`] ids are taken.
    pub fn intern(&mut self, sig: SignatureRef<'_>) -> Result<(u32, bool), AgentError> {
        let hash = self.hasher.hash_one(sig);
        if let Some(ids) = self.index.get(&hash) {
            for &id in ids {
                if self.get(id).is_some_and(|s| s.as_ref() == sig) {
                    return Ok((id, false));
                }
            }
        }
        // Skip ids the peer-side `define` may have filled (a table used both ways).
        while self
            .sigs
            .get(self.next as usize)
            .is_some_and(Option::is_some)
        {
            self.next += 1;
        }
        let id = self.next;
        if id as usize >= MAX_CALLS {
            return Err(AgentError::CallTableFull);
        }
        self.put(id, sig.to_owned(), hash);
        self.next += 1;
        Ok((id, true))
    }

    /// Receiver side: bind `id` to `sig` (a DEFINE frame). A later DEFINE of the same id
    /// replaces the earlier one.
    ///
    /// # Errors
    ///
    /// [`AgentError::CallIdOutOfRange`] if `id >= MAX_CALLS`.
    pub fn define(&mut self, id: u32, sig: Signature) -> Result<(), AgentError> {
        if id as usize >= MAX_CALLS {
            return Err(AgentError::CallIdOutOfRange(id));
        }
        if let Some(old) = self.get(id) {
            let old_hash = self.hasher.hash_one(old.as_ref());
            if let Some(ids) = self.index.get_mut(&old_hash) {
                ids.retain(|&i| i != id);
                // Redefining ids with ever new signatures must not grow the index.
                if ids.is_empty() {
                    self.index.remove(&old_hash);
                }
            }
        }
        let hash = self.hasher.hash_one(sig.as_ref());
        self.put(id, sig, hash);
        Ok(())
    }

    /// The signature bound to `id`, if any.
    pub fn get(&self, id: u32) -> Option<&Signature> {
        self.sigs.get(id as usize).and_then(Option::as_ref)
    }

    fn put(&mut self, id: u32, sig: Signature, hash: u64) {
        let i = id as usize;
        if self.sigs.len() <= i {
            self.sigs.resize(i + 1, None);
        }
        if let Some(slot) = self.sigs.get_mut(i) {
            if slot.replace(sig).is_none() {
                self.defined += 1;
            }
        }
        self.index.entry(hash).or_default().push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redefining_one_id_with_new_signatures_keeps_one_index_entry() {
        let mut table = CallTable::new();
        for i in 0..1_000 {
            let service = format!("com.example.S{i}");
            let sig = SignatureRef {
                service: &service,
                method: "m",
                parameter_types: "",
                version: "",
                group: "",
            };
            table.define(0, sig.to_owned()).unwrap();
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.index.len(), 1, "stale index entries were kept");
        assert_eq!(table.get(0).unwrap().service, "com.example.S999");
    }
}
