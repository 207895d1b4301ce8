#!/bin/bash
# How late Java's Thread.sleep(50) wakes on this machine: the race's provider held each
# call in Thread.sleep(50) on one of its pool's threads, so its answers come this much
# after 50 ms, and scattered by this much, where `bench provider`'s timers all wake
# together a few tens of microseconds late. THREADS threads (default 128, one per load
# connection), each starting at a random offset within 50 ms, sleep ROUNDS times
# (default 60; the first five are dropped). Needs a JDK (`bash .ci/setup` installs one).
#
#   bash bench/scripts/java-sleep-lateness.sh
set -eu
THREADS=${THREADS:-128} ROUNDS=${ROUNDS:-60}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
cat > "$D/SleepLateness.java" <<'JAVA'
import java.util.*;
import java.util.concurrent.TimeUnit;

public class SleepLateness {
    public static void main(String[] args) throws Exception {
        int threads = Integer.parseInt(args[0]), rounds = Integer.parseInt(args[1]);
        long[][] late = new long[threads][rounds];
        Thread[] ts = new Thread[threads];
        Random random = new Random(1);
        for (int i = 0; i < threads; i++) {
            final int k = i;
            final long offsetUs = random.nextInt(50_000);
            ts[i] = new Thread(() -> {
                try {
                    TimeUnit.MICROSECONDS.sleep(offsetUs);
                    for (int j = 0; j < rounds; j++) {
                        long t = System.nanoTime();
                        Thread.sleep(50);
                        late[k][j] = System.nanoTime() - t - 50_000_000L;
                    }
                } catch (InterruptedException e) {
                    throw new RuntimeException(e);
                }
            });
            ts[i].start();
        }
        for (Thread t : ts) t.join();
        List<Long> all = new ArrayList<>();
        for (long[] row : late) for (int j = 5; j < rounds; j++) all.add(row[j]);
        Collections.sort(all);
        double mean = all.stream().mapToLong(x -> x).average().orElse(0);
        double var = all.stream().mapToDouble(x -> (x - mean) * (x - mean)).sum() / all.size();
        int n = all.size();
        System.out.printf("Thread.sleep(50) lateness, %d sleeps on %d threads: mean %.0f us, sd %.0f us,"
            + " p10 %d, p50 %d, p90 %d, p99 %d us%n", n, threads, mean / 1e3, Math.sqrt(var) / 1e3,
            all.get(n / 10) / 1000, all.get(n / 2) / 1000, all.get(n * 9 / 10) / 1000, all.get(n * 99 / 100) / 1000);
    }
}
JAVA
javac -d "$D" "$D/SleepLateness.java"
java -cp "$D" SleepLateness "$THREADS" "$ROUNDS"
