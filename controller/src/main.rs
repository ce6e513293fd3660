fn main() {
    eprintln!("trellis-controller: not wired yet");
    std::process::exit(2);
}
