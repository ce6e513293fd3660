fn main() {
    eprintln!("trellis-waypoint: not yet wired");
    std::process::exit(2);
}
