'use strict';
// The demo's user directory, standing in for Laravel's `users` table and its roles.
//
//   1 Alice Admin     admin   (the dashboard's default user)
//   2 Bob Admin       admin
//   3 Carol Customer  user    (refused every admin-* channel)
//   1001..20000       user    simulated shoppers (the simulator's sockets on presence-user-presence)

const STAFF = Object.freeze({
  1: Object.freeze({ id: 1, name: 'Alice Admin', role: 'admin' }),
  2: Object.freeze({ id: 2, name: 'Bob Admin', role: 'admin' }),
  3: Object.freeze({ id: 3, name: 'Carol Customer', role: 'user' }),
});

const FIRST_NAMES = ['Amara', 'Bruno', 'Chen', 'Dalia', 'Emeka', 'Farah', 'Goran', 'Hana', 'Ivan', 'Jia', 'Kofi', 'Lena', 'Mateo', 'Nia', 'Omar', 'Priya', 'Quinn', 'Rosa', 'Sami', 'Tove'];

const SHOPPER_MIN = 1001;
const SHOPPER_MAX = 20000; // room for a store of thousands online (--online) and their churn

/** The user with this id (number or numeric string), or undefined. */
function findUser(id) {
  const n = Number(id);
  if (!Number.isInteger(n) || String(n) !== String(id).trim()) return undefined;
  if (STAFF[n]) return STAFF[n];
  if (n >= SHOPPER_MIN && n <= SHOPPER_MAX) {
    return { id: n, name: `${FIRST_NAMES[n % FIRST_NAMES.length]} (shopper ${n})`, role: 'user' };
  }
  return undefined;
}

function isAdmin(user) {
  return Boolean(user) && user.role === 'admin';
}

module.exports = { STAFF, SHOPPER_MIN, SHOPPER_MAX, findUser, isAdmin };
