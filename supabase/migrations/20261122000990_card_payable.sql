-- What a card's holder may take out at the end of the festival (cash, bank transfer or refund).
--
-- The bonus of a top-up package (MIDI, MAXI) is the festival's gift for spending on site, not
-- money the holder paid in. Paying it out would mint money: top up MAXI (10000 paid, 11000 on the
-- card) and cash out 11000 at once. So the bonus counts as spent last: of what is left on a card,
-- the part up to its unspent bonus goes back to promotions, and only the rest is payable
-- (docs/architecture.md §4).

/**
 * The bonus a card received from top-up packages and still owns: bonuses of its completed
 * recharges minus what their refunds reversed. (Card replacement extends this to the bonus the
 * card took over from the card it replaced.)
 */
create function festival.card_bonus_received_cents(p_card_id text) returns bigint
language sql stable
set search_path = ''
as $$
  select coalesce(sum(r.bonus_cents - r.bonus_reversed_cents), 0)::bigint
  from festival.recharges r
  where r.card_id = p_card_id and r.status = 'completed'
$$;

/**
 * Splits a card balance into what may be paid out and the unspent bonus that is forfeited to
 * promotions instead: forfeited = least(balance, bonus received), payable = the rest.
 */
create function festival.card_payable_cents(
  p_card_id text, p_balance_cents bigint, out payable_cents bigint, out forfeited_bonus_cents bigint)
language plpgsql stable
set search_path = ''
as $$
begin
  forfeited_bonus_cents := least(greatest(p_balance_cents, 0), festival.card_bonus_received_cents(p_card_id));
  payable_cents := greatest(p_balance_cents, 0) - forfeited_bonus_cents;
end;
$$;
