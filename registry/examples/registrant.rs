//! Registers one instance and holds it until killed: `registrant URL SERVICE ADDR`.
//!
//! The registry tests run it as a child process and `kill -9` it, to check that an
//! agent that dies without deregistering is dropped (lease expiry, stale file entry).
//! Prints `REGISTERED` once the registration is in place.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, service, addr] = args.as_slice() else {
        eprintln!("usage: registrant URL SERVICE ADDR");
        std::process::exit(2);
    };
    let registry = match registry::open(Some(url)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("registrant: {e}");
            std::process::exit(1);
        }
    };
    let _registration = match registry.register(registry::Instance::new(service, addr)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("registrant: {e}");
            std::process::exit(1);
        }
    };
    println!("REGISTERED");
    let _ = std::io::stdout().flush();
    // Held until killed; gone by itself after a minute so it can never linger.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}
