//! The frontend's memory table: regions mapped from the descriptors it sent, and the
//! translation of its virtual addresses (ring addresses) into guest physical addresses.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use log::debug;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion,
};

use vhost_user_netd_ring::memory_fault::{self, FaultDomain, FitError, Shrink};

/// Most regions a frontend may add (QEMU's libvhost-user uses the same figure).
pub const MAX_MEM_SLOTS: u64 = 509;

/// Why a memory table change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("region has zero size or its addresses overflow")]
    BadRegion,
    #[error("region came without a file descriptor")]
    MissingFd,
    #[error("more than {MAX_MEM_SLOTS} regions")]
    TooManyRegions,
    #[error("region's file: {0}")]
    File(#[from] FitError),
    #[error("mapping the region failed: {0}")]
    Map(#[from] vm_memory::mmap::MmapRegionError),
    #[error("the mapped region has no host address")]
    NoHostAddress,
    #[error("registering the mapping for SIGBUS recovery: {0}")]
    Register(std::io::Error),
    #[error("regions overlap or cannot form guest memory: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
    #[error("no such region to remove")]
    NotFound,
}

/// What the frontend says about one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl RegionDesc {
    fn check(&self) -> Result<(), MemoryError> {
        let ok = self.memory_size != 0
            && self.guest_phys_addr.checked_add(self.memory_size).is_some()
            && self.user_addr.checked_add(self.memory_size).is_some()
            && self.mmap_offset.checked_add(self.memory_size).is_some()
            && usize::try_from(self.memory_size).is_ok();
        if ok {
            Ok(())
        } else {
            Err(MemoryError::BadRegion)
        }
    }
}

#[derive(Debug)]
struct MappedRegion {
    desc: RegionDesc,
    region: Arc<GuestRegionMmap>,
}

/// The current set of mapped regions of one frontend connection.
#[derive(Debug)]
pub struct MemoryTable {
    regions: Vec<MappedRegion>,
    /// Where a region whose file shrinks later is reported (see [`memory_fault`]).
    domain: Arc<FaultDomain>,
}

/// Maps one region: only if the file really has the bytes it describes, and registered with the
/// SIGBUS handler in case the file shrinks later.
fn map(
    desc: RegionDesc,
    fd: OwnedFd,
    domain: &Arc<FaultDomain>,
) -> Result<MappedRegion, MemoryError> {
    desc.check()?;
    let shrink = memory_fault::check_fits(fd.as_fd(), desc.mmap_offset, desc.memory_size)?;
    let file = File::from(fd);
    let mmap = MmapRegion::from_file(
        FileOffset::new(file, desc.mmap_offset),
        desc.memory_size as usize,
    )?;
    let region = GuestRegionMmap::new(mmap, GuestAddress(desc.guest_phys_addr))
        .ok_or(MemoryError::BadRegion)?;
    let region = Arc::new(region);
    let start = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|_| MemoryError::NoHostAddress)?;
    memory_fault::register(start, region.len() as usize, region.clone(), domain)
        .map_err(MemoryError::Register)?;
    if shrink == Shrink::Possible {
        debug!(
            "region at {:#x} is not sealed against shrinking; a shrink disconnects the frontend",
            desc.guest_phys_addr
        );
    }
    Ok(MappedRegion { desc, region })
}

impl Drop for MemoryTable {
    fn drop(&mut self) {
        self.regions.clear();
        // Regions only this table held are unmapped now (others when their last user lets go).
        memory_fault::sweep();
    }
}

impl MemoryTable {
    /// An empty table whose regions report faults to `domain`.
    pub fn new(domain: Arc<FaultDomain>) -> Self {
        MemoryTable {
            regions: Vec::new(),
            domain,
        }
    }

    /// The connection's fault domain (for the dirty log's mapping too).
    pub fn domain(&self) -> &Arc<FaultDomain> {
        &self.domain
    }

    /// Replaces the whole table (`SET_MEM_TABLE`); returns the new guest memory.
    pub fn replace(
        &mut self,
        regions: Vec<(RegionDesc, Option<OwnedFd>)>,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        if regions.len() as u64 > MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let mut mapped = Vec::new();
        for (desc, fd) in regions {
            mapped.push(map(desc, fd.ok_or(MemoryError::MissingFd)?, &self.domain)?);
        }
        let mem = build(&mapped)?;
        self.regions = mapped;
        memory_fault::sweep();
        Ok(mem)
    }

    /// Adds one region (`ADD_MEM_REG`). Re-adding an identical region is a no-op (QEMU 7.2 sends
    /// it once per queue pair). Returns the new guest memory, or `None` if nothing changed.
    pub fn add(
        &mut self,
        desc: RegionDesc,
        fd: Option<OwnedFd>,
    ) -> Result<Option<GuestMemoryMmap>, MemoryError> {
        if self.regions.iter().any(|r| r.desc == desc) {
            return Ok(None);
        }
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let region = map(desc, fd.ok_or(MemoryError::MissingFd)?, &self.domain)?;
        self.regions.push(region);
        match build(&self.regions) {
            Ok(mem) => Ok(Some(mem)),
            Err(e) => {
                self.regions.pop();
                Err(e)
            }
        }
    }

    /// Removes the region matching `desc` (`REM_MEM_REG`; the frontend's mmap offset is not
    /// compared, as QEMU may send 0).
    pub fn remove(&mut self, desc: RegionDesc) -> Result<GuestMemoryMmap, MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|r| {
                r.desc.guest_phys_addr == desc.guest_phys_addr
                    && r.desc.memory_size == desc.memory_size
                    && r.desc.user_addr == desc.user_addr
            })
            .ok_or(MemoryError::NotFound)?;
        let removed = self.regions.remove(pos);
        match build(&self.regions) {
            Ok(mem) => Ok(mem),
            Err(e) => {
                self.regions.insert(pos, removed);
                Err(e)
            }
        }
    }

    /// Translates a frontend virtual address into a guest physical address.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let d = r.desc;
            (va >= d.user_addr && va - d.user_addr < d.memory_size)
                .then(|| d.guest_phys_addr + (va - d.user_addr))
        })
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

fn build(regions: &[MappedRegion]) -> Result<GuestMemoryMmap, MemoryError> {
    if regions.is_empty() {
        return Ok(GuestMemoryMmap::new());
    }
    GuestMemoryMmap::from_arc_regions(regions.iter().map(|r| r.region.clone()).collect())
        .map_err(MemoryError::from)
}
