// remove_tree: removes nested trees and files, never follows symbolic links out of the tree.
#include "kldq/core/fs.hpp"
#include "support/catch.hpp"

TEST_CASE("remove_tree removes trees without following links", "[core]") {
  kldq::test::TempDir outside("fs-out");
  kldq::test::write_text(outside / "keep.txt", "keep");
  kldq::test::TempDir dir("fs");
  const auto root = dir / "tree";
  kldq::test::fs::create_directories(root / "a" / "b");
  kldq::test::write_text(root / "a" / "b" / "f.txt", "x");
  kldq::test::write_text(root / "g.txt", "y");
  kldq::test::fs::create_directory_symlink(outside.path(), root / "link");
  CHECK(kldq::remove_tree(root));
  CHECK_FALSE(kldq::test::fs::exists(root));
  CHECK(kldq::test::read_text(outside / "keep.txt") == "keep");
  CHECK(kldq::remove_tree(root));  // already gone
  kldq::test::write_text(dir / "file", "z");
  CHECK(kldq::remove_tree(dir / "file"));
  CHECK_FALSE(kldq::test::fs::exists(dir / "file"));
}
