//! `ConnMap`: the application's per-connection data, keyed by [`ConnId`] and checked by
//! generation.

use std::fmt;

use crate::conn::ConnId;

/// A map from [`ConnId`] to the application's per-connection data: O(1) insert, get and
/// remove, indexed by the id's slot with no hashing, and checked by the id's generation.
///
/// The loop reuses the slot of a closed connection for a later one. An id kept after its
/// connection closed (a *stale* id) carries the old generation, so it never finds,
/// replaces or removes the value of the connection that now holds the slot, and the new
/// connection's id never finds a value left behind for the old one. Like the loop
/// itself, the map turns stale ids into misses instead of mix-ups.
///
/// This is how a handler keeps user data per connection without a [`Handler`] change:
/// insert in [`Handler::opened`] (or when calling [`Ctx::connect`]), look up in the
/// other callbacks, and remove in [`Handler::closed`]. An entry that is never removed
/// stays until the connection that reuses its slot gets an entry (then it is dropped), or
/// until [`ConnMap::remove`], [`ConnMap::retain`] or [`ConnMap::clear`].
///
/// Use one map per loop: ids are not scoped to a loop, so the ids of two loops collide.
/// The map holds one slot per slot index seen, so it grows to the loop's peak number of
/// connections and keeps that capacity. (The generation is 32 bits: an id would have to
/// be kept across four billion connections of its loop to alias a new one.)
///
/// [`Handler`]: crate::Handler
/// [`Handler::opened`]: crate::Handler::opened
/// [`Handler::closed`]: crate::Handler::closed
/// [`Ctx::connect`]: crate::Ctx::connect
///
/// # Examples
///
/// Counting the bytes each connection sent, and answering with the count at its end:
///
/// ```
/// use reactor::{Builder, CloseReason, Config, Conn, ConnMap, Ctx, EndOfInput, Handler};
/// use std::io::{Read, Write};
///
/// struct Counter {
///     seen: ConnMap<usize>,
/// }
///
/// impl Handler for Counter {
///     type Tag = ();
///     type Msg = ();
///     type Timer = ();
///     fn opened(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<()>) {
///         self.seen.insert(conn.id, 0);
///     }
///     fn data(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
///         if let Some(n) = self.seen.get_mut(conn.id) {
///             *n += input.len();
///         }
///         input.len()
///     }
///     fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) -> EndOfInput {
///         let n = self.seen.get(conn.id).copied().unwrap_or(0);
///         cx.write(conn.id, format!("{n} bytes").as_bytes());
///         EndOfInput::Close // after the answer is written
///     }
///     fn closed(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<()>, _: CloseReason) {
///         self.seen.remove(conn.id);
///     }
/// }
///
/// let reactor = Builder::new(Config::default())
///     .listen("127.0.0.1:0".parse().unwrap(), ())
///     .start(|_, _| Counter { seen: ConnMap::new() })
///     .unwrap();
/// let mut client = std::net::TcpStream::connect(reactor.local_addrs()[0]).unwrap();
/// client.write_all(b"hello").unwrap();
/// client.shutdown(std::net::Shutdown::Write).unwrap();
/// let mut answer = String::new();
/// client.read_to_string(&mut answer).unwrap();
/// assert_eq!(answer, "5 bytes");
/// reactor.stop();
/// reactor.join();
/// ```
pub struct ConnMap<V> {
    /// By slot index: the generation of the id the value was inserted for, and the value.
    slots: Vec<Option<(u32, V)>>,
    len: usize,
}

impl<V> ConnMap<V> {
    /// An empty map (no allocation until the first insert).
    pub const fn new() -> Self {
        ConnMap {
            slots: Vec::new(),
            len: 0,
        }
    }

    /// An empty map with room for connections in slots `0..capacity` before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        ConnMap {
            slots: Vec::with_capacity(capacity),
            len: 0,
        }
    }

    /// Number of entries (including any left behind for closed connections whose slot
    /// no newer entry has taken yet).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `id`'s value, and returns what the map let go of for `id`'s connection: its
    /// previous value, if it had one. A value left behind for an older connection in the
    /// same slot is dropped (its connection is gone). If `id` is itself stale (the slot
    /// holds a newer connection's entry), nothing changes and `value` is handed back.
    pub fn insert(&mut self, id: ConnId, value: V) -> Option<V> {
        let index = id.index();
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        match &mut self.slots[index] {
            Some((gen, old)) if *gen == id.gen => Some(std::mem::replace(old, value)),
            Some((gen, _)) if newer(*gen, id.gen) => Some(value),
            slot @ Some(_) => {
                *slot = Some((id.gen, value)); // over an older connection's leftover
                None
            }
            slot @ None => {
                *slot = Some((id.gen, value));
                self.len += 1;
                None
            }
        }
    }

    /// `id`'s value, or `None` if it has none (a stale id never finds the value of the
    /// connection now in its slot).
    pub fn get(&self, id: ConnId) -> Option<&V> {
        match self.slots.get(id.index()) {
            Some(Some((gen, v))) if *gen == id.gen => Some(v),
            _ => None,
        }
    }

    /// `id`'s value, mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut V> {
        match self.slots.get_mut(id.index()) {
            Some(Some((gen, v))) if *gen == id.gen => Some(v),
            _ => None,
        }
    }

    /// Whether `id` has a value.
    pub fn contains(&self, id: ConnId) -> bool {
        self.get(id).is_some()
    }

    /// Removes and returns `id`'s value. A stale id removes nothing: the entry of the
    /// connection now in its slot stays.
    pub fn remove(&mut self, id: ConnId) -> Option<V> {
        let slot = self.slots.get_mut(id.index())?;
        match slot {
            Some((gen, _)) if *gen == id.gen => {
                self.len -= 1;
                slot.take().map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Removes every entry (keeping the capacity).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(ConnId, &mut V) -> bool) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some((gen, v)) = slot {
                if !keep(id(index, *gen), v) {
                    *slot = None;
                    self.len -= 1;
                }
            }
        }
    }

    /// The entries, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &V)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_ref().map(|(gen, v)| (id(index, *gen), v)))
    }

    /// The entries, in slot order, with mutable values.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut V)> + '_ {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_mut().map(|(gen, v)| (id(index, *gen), v)))
    }
}

/// Whether generation `a` was given out after `b`. A loop numbers its connections from
/// one counter, so a slot's later connection has the later generation; compared with
/// wrapping, as sequence numbers are.
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn id(index: usize, gen: u32) -> ConnId {
    ConnId {
        index: index as u32,
        gen,
    }
}

impl<V> Default for ConnMap<V> {
    fn default() -> Self {
        ConnMap::new()
    }
}

impl<V: Clone> Clone for ConnMap<V> {
    fn clone(&self) -> Self {
        ConnMap {
            slots: self.slots.clone(),
            len: self.len,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for ConnMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(index: u32, gen: u32) -> ConnId {
        ConnId { index, gen }
    }

    #[test]
    fn insert_get_remove() {
        let mut m = ConnMap::new();
        let a = conn(0, 1);
        let b = conn(3, 2);
        assert!(m.is_empty());
        assert_eq!(m.insert(a, "a"), None);
        assert_eq!(m.insert(b, "b"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(a), Some(&"a"));
        assert_eq!(m.get(b), Some(&"b"));
        assert_eq!(m.get(conn(1, 1)), None, "an empty slot");
        assert_eq!(m.get(conn(9, 1)), None, "beyond the slots");
        assert_eq!(m.insert(a, "a2"), Some("a"), "same id: the old value back");
        *m.get_mut(b).unwrap() = "b2";
        assert_eq!(m.remove(b), Some("b2"));
        assert_eq!(m.remove(b), None);
        assert_eq!(m.remove(conn(9, 1)), None);
        assert_eq!(m.len(), 1);
        assert!(m.contains(a) && !m.contains(b));
    }

    #[test]
    fn a_stale_id_never_finds_the_newer_connections_value() {
        let mut m = ConnMap::new();
        let old = conn(5, 7);
        let new = conn(5, 9); // the loop reused slot 5 for a newer connection
        m.insert(old, "old");
        // The old connection closed without its entry being removed: the new id does
        // not see the leftover.
        assert_eq!(m.get(new), None);
        assert!(m.get_mut(new).is_none());
        assert_eq!(m.remove(new), None);
        assert_eq!(m.get(old), Some(&"old"));
        // The new connection's entry replaces (drops) the leftover.
        assert_eq!(m.insert(new, "new"), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(old), None);
        assert!(m.get_mut(old).is_none());
        assert!(!m.contains(old));
        assert_eq!(m.remove(old), None, "a stale id removes nothing");
        assert_eq!(
            m.insert(old, "old again"),
            Some("old again"),
            "nor replaces"
        );
        assert_eq!(m.get(new), Some(&"new"));
        assert_eq!(m.get(old), None);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn generations_compare_across_the_wrap() {
        let mut m = ConnMap::new();
        let old = conn(2, u32::MAX);
        let new = conn(2, 1); // the loop's counter wrapped in between
        assert_eq!(m.insert(new, 'n'), None);
        assert_eq!(m.insert(old, 'o'), Some('o'), "refused: the slot is newer");
        assert_eq!(m.get(new), Some(&'n'));
        let mut m = ConnMap::new();
        m.insert(old, 'o');
        assert_eq!(m.insert(new, 'n'), None, "the leftover is replaced");
        assert_eq!((m.get(new), m.get(old), m.len()), (Some(&'n'), None, 1));
    }

    #[test]
    fn iter_retain_clear() {
        let mut m = ConnMap::with_capacity(4);
        for i in 0..6 {
            m.insert(conn(i, 100 + i), i);
        }
        *m.get_mut(conn(2, 102)).unwrap() += 1;
        assert_eq!(m.get(conn(2, 102)), Some(&3));
        let ids: Vec<_> = m.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, (0..6).map(|i| conn(i, 100 + i)).collect::<Vec<_>>());
        for (_, v) in m.iter_mut() {
            *v *= 10;
        }
        m.retain(|id, v| id.index() % 2 == 0 && *v > 0);
        let left: Vec<_> = m.iter().map(|(id, v)| (id.index(), *v)).collect();
        assert_eq!(left, vec![(2, 30), (4, 40)]);
        assert_eq!(m.len(), 2);
        assert_eq!(format!("{m:?}").matches("ConnId").count(), 2);
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.get(conn(2, 102)), None);
    }
}
