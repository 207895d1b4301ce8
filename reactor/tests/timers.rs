//! Timers: one-shots fire in deadline order, cancelled ones never fire, periodic ones
//! repeat until cancelled, and a hundred thousand are created and cancelled cheaply.

mod util;

use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use reactor::{Builder, Config, Conn, Ctx, Handler, LoopHandle, TimerId};
use util::*;

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Order,
    Bulk { count: u64, keep_every: u64 },
}

const PERIODIC: u64 = u64::MAX - 1;
const SENTINEL: u64 = u64::MAX - 2;

#[derive(Debug)]
struct Timed {
    tx: Sender<(u64, Instant)>,
    periodic: Option<TimerId>,
    beats: u32,
    started: Instant,
}

impl Handler for Timed {
    type Tag = ();
    type Msg = Cmd;
    type Timer = u64;

    fn message(&mut self, cx: &mut Ctx<'_, Self>, cmd: Cmd) {
        self.started = cx.now();
        match cmd {
            Cmd::Order => {
                for (ms, token) in [(50, 5), (10, 1), (30, 3), (20, 2), (40, 4), (20, 22)] {
                    cx.set_timer(Duration::from_millis(ms), token);
                }
                let cancelled = cx.set_timer(Duration::from_millis(25), 666);
                assert!(cx.cancel_timer(cancelled));
                assert!(!cx.cancel_timer(cancelled), "second cancel");
                self.periodic = Some(cx.set_periodic(Duration::from_millis(7), PERIODIC));
                cx.set_timer(Duration::from_millis(120), SENTINEL);
            }
            Cmd::Bulk { count, keep_every } => {
                let t0 = Instant::now();
                let ids: Vec<TimerId> = (0..count)
                    .map(|i| cx.set_timer(Duration::from_millis(1 + i % 100), i))
                    .collect();
                for (i, id) in ids.into_iter().enumerate() {
                    if !(i as u64).is_multiple_of(keep_every) {
                        assert!(cx.cancel_timer(id));
                    }
                }
                self.tx.send((u64::MAX, t0)).unwrap();
                cx.set_timer(Duration::from_millis(150), SENTINEL);
            }
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, id: TimerId, token: u64) {
        if token == PERIODIC {
            assert_eq!(Some(id), self.periodic, "a periodic timer keeps its id");
            self.beats += 1;
            if self.beats == 4 {
                assert!(
                    cx.cancel_timer(id),
                    "cancel a periodic timer from its own beat"
                );
            }
        }
        self.tx.send((token, cx.now())).unwrap();
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
}

fn start() -> (
    Running<Cmd>,
    LoopHandle<Cmd>,
    std::sync::mpsc::Receiver<(u64, Instant)>,
) {
    let (tx, rx) = channel();
    let r = Builder::<()>::new(Config::default())
        .start(move |_, _| Timed {
            tx: tx.clone(),
            periodic: None,
            beats: 0,
            started: Instant::now(),
        })
        .unwrap();
    let h = r.handles()[0].clone();
    (Running::new(r), h, rx)
}

#[test]
fn one_shots_in_order_cancelled_skipped_periodic_repeats() {
    let (_r, h, rx) = start();
    let sent = Instant::now();
    h.send(Cmd::Order).unwrap();
    let mut fired = Vec::new();
    loop {
        let (token, at) = recv(&rx, "timer");
        if token == SENTINEL {
            break;
        }
        fired.push((token, at));
    }
    let one_shots: Vec<u64> = fired
        .iter()
        .map(|f| f.0)
        .filter(|&t| t != PERIODIC)
        .collect();
    assert_eq!(
        one_shots,
        [1, 2, 22, 3, 4, 5],
        "deadline order, FIFO on ties"
    );
    let beats = fired.iter().filter(|f| f.0 == PERIODIC).count();
    assert_eq!(beats, 4, "periodic fires until cancelled, then never again");
    // No timer fires early: each one's firing time is at least its delay after sending.
    for (token, at) in &fired {
        let ms = match *token {
            22 => 20,
            PERIODIC => 7,
            t => t * 10,
        };
        assert!(
            at.duration_since(sent) >= Duration::from_millis(ms),
            "timer {token} fired early"
        );
    }
    assert_empty(&rx, "timer");
}

#[test]
fn hundred_thousand_created_and_cancelled() {
    let (_r, h, rx) = start();
    const COUNT: u64 = 100_000;
    const KEEP: u64 = 10;
    h.send(Cmd::Bulk {
        count: COUNT,
        keep_every: KEEP,
    })
    .unwrap();
    let (mark, t0) = recv(&rx, "bulk done");
    assert_eq!(mark, u64::MAX);
    let took = t0.elapsed();
    eprintln!("100,000 timers created and 90,000 cancelled in {took:?} (plus channel)");
    let mut fired = vec![false; COUNT as usize];
    loop {
        let (token, _) = recv(&rx, "timer");
        if token == SENTINEL {
            break;
        }
        assert_eq!(token % KEEP, 0, "cancelled timer {token} fired");
        assert!(!fired[token as usize], "timer {token} fired twice");
        fired[token as usize] = true;
    }
    let count = fired.iter().filter(|f| **f).count() as u64;
    assert_eq!(count, COUNT / KEEP, "every kept timer fired once");
}

/// Re-arms a zero-delay timer from its own callback (a "run again next iteration"
/// idiom), forever; answers each message with how often the timer fired.
#[derive(Debug)]
struct Spinner {
    tx: Sender<u64>,
    fired: u64,
    started: bool,
}

impl Handler for Spinner {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn message(&mut self, cx: &mut Ctx<'_, Self>, _: ()) {
        if !self.started {
            self.started = true;
            cx.set_timer(Duration::ZERO, ());
        }
        self.tx.send(self.fired).unwrap();
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: TimerId, _: ()) {
        self.fired += 1;
        cx.set_timer(Duration::ZERO, ());
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
}

/// A timer set from a timer callback waits for the next iteration even when already
/// due, so a zero-delay chain cannot starve messages, I/O and a stop.
#[test]
fn zero_delay_timer_chain_does_not_starve_the_loop() {
    let (tx, rx) = channel();
    let r = Running::new(
        Builder::<()>::new(Config::default())
            .start(move |_, _| Spinner {
                tx: tx.clone(),
                fired: 0,
                started: false,
            })
            .unwrap(),
    );
    let h = r.reactor().handles()[0].clone();
    let mut fired = 0;
    for _ in 0..100 {
        h.send(()).unwrap();
        fired = recv(&rx, "an answer while the timer chain runs");
        if fired > 0 {
            break;
        }
    }
    assert!(fired > 0, "the timer chain never ran");
    r.shutdown();
}
