//! Writes the committed seed corpus, `fuzz/seeds/<target>/`, from
//! `ferry_fuzz::seeds`: real frames from the production encoder, the packaged
//! configs, realistic `DUE_BACKUP` lists and paths. Run it after changing the
//! protocol or the seeds (the workspace test `fuzz_seeds` says when):
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for target in ferry_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = ferry_fuzz::seeds(target).unwrap_or_default();
        // Drop seeds that are no longer generated.
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if !seeds
                .iter()
                .any(|(name, _)| entry.file_name() == name.as_str())
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{}: {} seeds in {}", target, seeds.len(), dir.display());
    }
    Ok(())
}
