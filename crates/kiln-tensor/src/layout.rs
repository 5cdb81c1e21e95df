//! Shapes and strided layouts (row-major, strides in elements).

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shape: Shape,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl Layout {
    pub fn contiguous(shape: Shape) -> Self {
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }

    pub fn is_contiguous(&self) -> bool {
        let expect = self.shape.contiguous_strides();
        self.shape
            .dims()
            .iter()
            .zip(self.strides.iter().zip(expect.iter()))
            .all(|(&d, (&s, &e))| d <= 1 || s == e)
    }

    /// Offset one past the last element this layout can touch (0 for an empty tensor).
    pub fn extent(&self) -> usize {
        if self.shape.elem_count() == 0 {
            return self.offset;
        }
        self.offset
            + self
                .shape
                .dims()
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// Storage index of every element, in row-major logical order.
    pub fn indices(&self) -> StridedIndex<'_> {
        StridedIndex {
            layout: self,
            pos: vec![0; self.shape.rank()],
            next: if self.shape.elem_count() == 0 {
                None
            } else {
                Some(self.offset)
            },
        }
    }
}

pub struct StridedIndex<'a> {
    layout: &'a Layout,
    pos: Vec<usize>,
    next: Option<usize>,
}

impl Iterator for StridedIndex<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let current = self.next?;
        let dims = self.layout.shape.dims();
        let mut idx = current;
        let mut d = dims.len();
        loop {
            if d == 0 {
                self.next = None;
                break;
            }
            d -= 1;
            self.pos[d] += 1;
            idx += self.layout.strides[d];
            if self.pos[d] < dims[d] {
                self.next = Some(idx);
                break;
            }
            idx -= self.pos[d] * self.layout.strides[d];
            self.pos[d] = 0;
        }
        Some(current)
    }
}
