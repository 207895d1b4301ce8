//! `Ctx::wall_now`: one reading per loop iteration, the same for every callback of the
//! iteration, and a new one in the next; `Ctx::wall_unix_nanos` is the same reading.

mod util;

use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reactor::{Builder, Config, Conn, Ctx, Handler, TimerId};
use util::*;

/// What a callback saw: the wall clock at its start, then after it had run a while (and
/// as Unix nanoseconds).
type Seen = (SystemTime, SystemTime, u64);

#[derive(Debug)]
struct Stamps {
    tx: Sender<Seen>,
}

impl Stamps {
    /// The wall clock, then again after 3 ms of work in the same callback.
    fn stamp(&self, cx: &Ctx<'_, Self>) {
        let first = cx.wall_now();
        std::thread::sleep(Duration::from_millis(3));
        let nanos = cx.wall_unix_nanos();
        self.tx.send((first, cx.wall_now(), nanos)).unwrap();
    }
}

impl Handler for Stamps {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn message(&mut self, cx: &mut Ctx<'_, Self>, _: ()) {
        self.stamp(cx);
        cx.set_timer(Duration::from_millis(5), ());
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: TimerId, _: ()) {
        self.stamp(cx);
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
}

#[test]
fn the_wall_clock_is_read_once_per_iteration() {
    let (tx, rx) = channel();
    let r = Builder::<()>::new(Config::default())
        .start(move |_, _| Stamps { tx: tx.clone() })
        .unwrap();
    let h = r.handles()[0].clone();
    let _r = Running::new(r);
    let before = SystemTime::now();
    h.send(()).unwrap();
    let (m_first, m_again, m_nanos) = recv(&rx, "the message's stamps");
    let (t_first, t_again, t_nanos) = recv(&rx, "the timer's stamps");
    let after = SystemTime::now();
    assert_eq!(m_first, m_again, "one reading for the whole iteration");
    assert_eq!(t_first, t_again, "one reading for the whole iteration");
    assert!(
        before <= m_first,
        "read when the iteration asked, not earlier"
    );
    assert!(
        t_first.duration_since(m_first).unwrap_or_default() >= Duration::from_millis(4),
        "the next iteration reads again: {m_first:?} then {t_first:?}"
    );
    assert!(t_first <= after);
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert_eq!(m_nanos, nanos(m_first), "the same reading, in nanoseconds");
    assert_eq!(t_nanos, nanos(t_first), "the same reading, in nanoseconds");
}
